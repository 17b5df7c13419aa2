-- Returns a row if the index of an agent's overruns is missing or INVALID.
SELECT 'budget_reservation_agent_overrun_idx' AS problem
 WHERE NOT EXISTS (SELECT FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                    WHERE c.relname = 'budget_reservation_agent_overrun_idx'
                      AND c.relnamespace = 'sigledger'::regnamespace AND x.indisvalid);
