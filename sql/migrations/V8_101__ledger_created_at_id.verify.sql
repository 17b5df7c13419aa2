-- Returns a row for each problem of V8_101: the ledger's (created_at, id) index missing, INVALID or on other
-- columns, a partition without its index attached, the index on created_at alone still there.
SELECT 'llm_cost_log_created_at_id_idx is missing or INVALID' AS problem
 WHERE NOT EXISTS (SELECT FROM pg_index x
                    WHERE x.indexrelid = to_regclass('sigledger.llm_cost_log_created_at_id_idx') AND x.indisvalid)
UNION ALL
SELECT 'llm_cost_log_created_at_id_idx is not on (created_at, id)'
 WHERE to_regclass('sigledger.llm_cost_log_created_at_id_idx') IS NOT NULL
   AND pg_get_indexdef(to_regclass('sigledger.llm_cost_log_created_at_id_idx'))
       <> 'CREATE INDEX llm_cost_log_created_at_id_idx ON ONLY sigledger.llm_cost_log USING btree (created_at, id)'
UNION ALL
SELECT format('partition %s has no index attached to llm_cost_log_created_at_id_idx', p.relname)
  FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid
 WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass
   AND NOT EXISTS (SELECT FROM pg_inherits x JOIN pg_index ix ON ix.indexrelid = x.inhrelid
                    WHERE x.inhparent = to_regclass('sigledger.llm_cost_log_created_at_id_idx')
                      AND ix.indrelid = p.oid AND ix.indisvalid)
UNION ALL
SELECT 'llm_cost_log_created_at_idx (created_at alone) is still there'
 WHERE to_regclass('sigledger.llm_cost_log_created_at_idx') IS NOT NULL;
