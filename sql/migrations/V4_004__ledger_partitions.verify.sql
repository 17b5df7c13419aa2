-- Returns a row for each problem of the partitioned ledger: not partitioned, no DEFAULT partition, no
-- partition for the current month, a partition without the append-only triggers, the key registry missing.
SELECT 'llm_cost_log is not partitioned' AS problem
 WHERE (SELECT relkind FROM pg_class WHERE oid = 'sigledger.llm_cost_log'::regclass) <> 'p'
UNION ALL
SELECT 'llm_cost_log has no DEFAULT partition'
 WHERE NOT EXISTS (SELECT FROM pg_partitioned_table WHERE partrelid = 'sigledger.llm_cost_log'::regclass
                      AND partdefid <> 0)
UNION ALL
SELECT 'no partition of llm_cost_log for the current month'
 WHERE sigledger._ledger_legacy_cutoff() <= now()
   AND to_regclass('sigledger.llm_cost_log_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')) IS NULL
UNION ALL
SELECT format('partition %s lacks an append-only trigger', c.relname)
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass
   AND (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgenabled <> 'D'
           AND t.tgname IN ('llm_cost_log_append_only_row', 'llm_cost_log_append_only_truncate')) <> 2
UNION ALL
SELECT 'key registry llm_cost_log_key missing' WHERE to_regclass('sigledger.llm_cost_log_key') IS NULL;
