-- sigledger:no-transaction
-- Rolls back V8_101: the index on created_at alone again (llm_cost_log_created_at_idx, each partition's named as
-- V4_003/V4_004 and _ensure_ledger_partitions named it), built online as V8_101 built its own: the parent ON ONLY,
-- each partition's CONCURRENTLY and attached (\gexec: what is missing), then the (created_at, id) index dropped
-- under a moment's ACCESS EXCLUSIVE. Nothing is lost. A re-run after a failure goes on where it stopped.
BEGIN;
CREATE INDEX IF NOT EXISTS llm_cost_log_created_at_idx ON ONLY sigledger.llm_cost_log (created_at);
COMMIT;

SELECT s.build, s.attach
  FROM (SELECT 0 AS k, p.relname,
               format('CREATE INDEX CONCURRENTLY %I ON sigledger.%I (created_at)',
                      p.relname || '_created_at_idx', p.relname) AS build,
               format('ALTER INDEX sigledger.llm_cost_log_created_at_idx ATTACH PARTITION sigledger.%I',
                      p.relname || '_created_at_idx') AS attach
          FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid
         WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass
           AND NOT EXISTS (SELECT FROM pg_inherits x JOIN pg_index ix ON ix.indexrelid = x.inhrelid
                            WHERE x.inhparent = 'sigledger.llm_cost_log_created_at_idx'::regclass
                              AND ix.indrelid = p.oid)
        UNION ALL
        SELECT 1, NULL, $check$DO $$
BEGIN
    IF NOT (SELECT x.indisvalid FROM pg_index x
             WHERE x.indexrelid = 'sigledger.llm_cost_log_created_at_idx'::regclass) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'V8_101 down: llm_cost_log_created_at_idx is not valid: a partition of llm_cost_log has no index attached to it',
            HINT = 'Run sigledger migrate down again: it builds and attaches what is missing.';
    END IF;
END
$$$check$, NULL) s
 ORDER BY s.k, s.relname
\gexec

BEGIN;
LOCK TABLE ONLY sigledger.llm_cost_log IN ACCESS EXCLUSIVE MODE;
LOCK TABLE sigledger.llm_cost_log IN ACCESS EXCLUSIVE MODE NOWAIT;
DROP INDEX IF EXISTS sigledger.llm_cost_log_created_at_id_idx;
COMMIT;

-- Last: a partition's (created_at, id) index that no parent holds (an INVALID leftover of an up of V8_101
-- that failed half way: dropping the parent index drops only the attached ones) is dropped, concurrently.
SELECT format('DROP INDEX CONCURRENTLY IF EXISTS sigledger.%I', c.relname)
  FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
 WHERE x.indrelid IN (SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass)
   AND c.relname LIKE '%\_created\_at\_id\_idx'
   AND NOT EXISTS (SELECT FROM pg_inherits h WHERE h.inhrelid = c.oid)
 ORDER BY c.relname
\gexec
