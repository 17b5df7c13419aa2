-- Raises when V4_001 is not in place; returns a row when the ledger is not append-only.
SELECT 'sigledger.model_price'::regclass, 'sigledger.cost_quarantine'::regclass
 WHERE false;
SELECT 'llm_cost_log append-only trigger missing' AS problem
 WHERE NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'llm_cost_log_append_only_row'
                      AND tgrelid = 'sigledger.llm_cost_log'::regclass AND tgenabled <> 'D');
