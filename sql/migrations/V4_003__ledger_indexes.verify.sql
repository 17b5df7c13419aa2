-- Returns a row for each ledger index that is missing or INVALID, and each ledger constraint not yet validated.
-- llm_cost_log_created_at_idx is superseded by llm_cost_log_created_at_id_idx (V8_101), which drops it: once that
-- migration ran, V8_101's own verify checks the new index instead.
SELECT i.name AS problem
  FROM (VALUES ('llm_cost_log_created_at_idx'), ('llm_cost_log_agent_charged_at_idx'),
               ('llm_cost_log_reservation_id_key')) AS i (name)
 WHERE NOT EXISTS (SELECT FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                    WHERE c.relname = i.name AND c.relnamespace = 'sigledger'::regnamespace AND x.indisvalid)
   AND NOT (i.name = 'llm_cost_log_created_at_idx'
            AND to_regclass('sigledger.llm_cost_log_created_at_id_idx') IS NOT NULL)
UNION ALL
SELECT conname FROM pg_constraint
 WHERE conrelid = 'sigledger.llm_cost_log'::regclass AND NOT convalidated;
