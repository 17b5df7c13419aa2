-- sigledger:no-transaction
-- V8_101: the ledger's index on created_at becomes one on (created_at, id): llm_cost_log_created_at_idx is
-- replaced by llm_cost_log_created_at_id_idx.
--
-- Why: a replay finds the ledger row of a key the registry holds by (id, created_at), created_at for partition
-- pruning (record_costs' stored rows, 111_record_costs.sql; record_cost's replay, _cost_insert). With the index on
-- created_at alone the planner may answer `id = X AND created_at = Y` by that index with id only a filter: on
-- statistics where created_at looks unique (rows of single calls) its cost ties with the partition's primary key,
-- and the order of the indexes decides (in the legacy partition, the created_at index). Every row of a record_costs
-- batch without created_at has the one now() of its call, so each lookup then read the whole batch: a replay was
-- O(batch^2) (8,000 rows: 4.75M buffers against 219k for recording them; tests/core/test_index_plans.py). With
-- (created_at, id) both columns are index conditions whichever of the two indexes the planner takes. The new
-- index replaces the old one, so an insert maintains as many indexes as before; range reads on created_at (the
-- reports, the DEFAULT partition probe of _ensure_ledger_partitions) use it as they used the old one.
--
-- Online, and without superuser. A partitioned index can be neither built nor dropped CONCURRENTLY, so:
--   1. the parent index is created ON ONLY (catalog only, under a moment's SHARE lock of the parent: inserts wait
--      for it at most the runner's lock_timeout; INVALID until every partition has its index attached; a
--      partition created from now on, by _ensure_ledger_partitions, gets its index at once, attached);
--   2. each partition's index is built CONCURRENTLY (SHARE UPDATE EXCLUSIVE: inserts go on) and attached (a
--      moment's lock on the new index only), then the parent is checked valid. The partitions are not the same
--      in every database (the monthly ones follow the clock), so one query lists what is missing and \gexec
--      runs it: a re-run after a failure builds only what is not attached yet, and the runner rebuilds an
--      INVALID index that a failed or cancelled build left (docs/deploying.md, The runner's other guarantees);
--   3. the old index is dropped: catalog only, under ACCESS EXCLUSIVE of the ledger and its partitions for
--      milliseconds (the ledger waited for, bounded by the runner's lock_timeout and retried; its partitions
--      NOWAIT: the runner never waits while holding the ledger).
-- The down file does the same the other way round.

-- 1. the parent index, INVALID until step 2 has attached every partition's
BEGIN;
-- ON ONLY: catalog only, nothing is built (a partitioned index cannot be built CONCURRENTLY)
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS llm_cost_log_created_at_id_idx ON ONLY sigledger.llm_cost_log (created_at, id);
COMMENT ON INDEX sigledger.llm_cost_log_created_at_id_idx IS
    'Range reads on created_at, and a row found by (id, created_at) with both as index conditions (a replay: V8_101).';
COMMIT;

-- 2. each partition's index, built CONCURRENTLY and attached; then the parent must be valid
SELECT s.build, s.attach
  FROM (SELECT 0 AS k, p.relname,
               format('CREATE INDEX CONCURRENTLY %I ON sigledger.%I (created_at, id)',
                      p.relname || '_created_at_id_idx', p.relname) AS build,
               format('ALTER INDEX sigledger.llm_cost_log_created_at_id_idx ATTACH PARTITION sigledger.%I',
                      p.relname || '_created_at_id_idx') AS attach
          FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid
         WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass
           AND NOT EXISTS (SELECT FROM pg_inherits x JOIN pg_index ix ON ix.indexrelid = x.inhrelid
                            WHERE x.inhparent = 'sigledger.llm_cost_log_created_at_id_idx'::regclass
                              AND ix.indrelid = p.oid)
        UNION ALL
        SELECT 1, NULL, $check$DO $$
BEGIN
    IF NOT (SELECT x.indisvalid FROM pg_index x
             WHERE x.indexrelid = 'sigledger.llm_cost_log_created_at_id_idx'::regclass) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'V8_101: llm_cost_log_created_at_id_idx is not valid: a partition of llm_cost_log has no index attached to it',
            HINT = 'Run sigledger migrate up again: it builds and attaches what is missing.';
    END IF;
END
$$$check$, NULL) s
 ORDER BY s.k, s.relname
\gexec

-- 3. the index on created_at alone gives way
BEGIN;
LOCK TABLE ONLY sigledger.llm_cost_log IN ACCESS EXCLUSIVE MODE;
LOCK TABLE sigledger.llm_cost_log IN ACCESS EXCLUSIVE MODE NOWAIT;
-- a partitioned index cannot be dropped CONCURRENTLY: catalog only, under the locks above, for milliseconds
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX IF EXISTS sigledger.llm_cost_log_created_at_idx;
COMMIT;

-- Last: a partition's index on created_at alone that no parent holds (an INVALID leftover of a down of this
-- file that failed half way: dropping the parent index drops only the attached ones) is dropped, concurrently.
SELECT format('DROP INDEX CONCURRENTLY IF EXISTS sigledger.%I', c.relname)
  FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
 WHERE x.indrelid IN (SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass)
   AND c.relname LIKE '%\_created\_at\_idx'
   AND NOT EXISTS (SELECT FROM pg_inherits h WHERE h.inhrelid = c.oid)
 ORDER BY c.relname
\gexec
