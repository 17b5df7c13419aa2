-- Verify V8_100: returns a row per problem (a one-CHECK constraint missing or not validated, a former
-- constraint still present on a table or a ledger partition).
SELECT 'constraint missing or not validated: ' || want.name AS problem
  FROM (VALUES ('llm_cost_log', 'llm_cost_log_rules'), ('budget_spend', 'budget_spend_rules'),
               ('budget_reservation', 'budget_reservation_rules')) AS want (tbl, name)
 WHERE NOT EXISTS (SELECT FROM pg_constraint c
                    WHERE c.conrelid = format('sigledger.%I', want.tbl)::regclass AND c.conname = want.name
                      AND c.contype = 'c' AND c.convalidated)
UNION ALL
SELECT format('former constraint still on %s: %s', c.conrelid::regclass, c.conname)
  FROM pg_constraint c
 WHERE c.contype = 'c' AND c.connamespace = 'sigledger'::regnamespace
   AND (c.conrelid IN ('sigledger.llm_cost_log'::regclass, 'sigledger.budget_spend'::regclass,
                       'sigledger.budget_reservation'::regclass)
        OR c.conrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'sigledger.llm_cost_log'::regclass))
   AND c.conname NOT IN ('llm_cost_log_rules', 'budget_spend_rules', 'budget_reservation_rules',
                         'llm_cost_log_legacy_range');
