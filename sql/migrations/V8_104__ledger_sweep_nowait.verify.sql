-- Verify V8_104: returns a row when _ensure_ledger_partitions is not the version that takes DEFAULT's lock NOWAIT.
SELECT '_ensure_ledger_partitions does not lock the DEFAULT partition NOWAIT (V8_104)' AS problem
 WHERE NOT EXISTS (SELECT FROM pg_proc p
                    WHERE p.oid = 'sigledger._ensure_ledger_partitions(integer)'::regprocedure
                      AND p.prosrc LIKE '%llm_cost_log_default IN ACCESS EXCLUSIVE MODE NOWAIT%');
