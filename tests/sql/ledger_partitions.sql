-- pgTAP: the ledger partitioned by month of created_at (V4_004). Layout, routing of rows, the key registry
-- (idempotent replay through the API, the backstop against a direct duplicate), append-only on the partitions,
-- no privilege for the app role on any partition or on the registry.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(23);

INSERT INTO sigledger.agent_registry (id, name) VALUES ('00000000-0000-0000-0000-00000000c201', 'partition-agent');
\set agent '''00000000-0000-0000-0000-00000000c201'''

SELECT is((SELECT relkind FROM pg_class WHERE oid = 'sigledger.llm_cost_log'::regclass), 'p'::"char",
          'llm_cost_log is a partitioned table');
SELECT is((SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'sigledger.llm_cost_log'::regclass),
          'r'::"char", 'partitioned by range');
SELECT isnt((SELECT partdefid FROM pg_partitioned_table WHERE partrelid = 'sigledger.llm_cost_log'::regclass),
            0::oid, 'it has a DEFAULT partition');
SELECT has_table('sigledger', 'llm_cost_log_key', 'the key registry exists');
SELECT col_is_pk('sigledger', 'llm_cost_log_key', 'idempotency_key', 'the registry''s primary key is the key');

-- what V4_004 made when the template was migrated (three months ahead of that day, two on a month's last day):
-- the months from the legacy cutoff on, without a gap
SELECT ok((SELECT count(*) >= 2 AND max(k) - min(k) + 1 = count(*)
                  AND min(k) = (SELECT (extract(year FROM t) * 12 + extract(month FROM t))::int
                                  FROM (SELECT sigledger._ledger_legacy_cutoff() AT TIME ZONE 'UTC' AS t) c)
             FROM (SELECT (right(c.relname, 6)::int / 100) * 12 + right(c.relname, 6)::int % 100 AS k
                     FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                    WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass
                      AND c.relname ~ '^llm_cost_log_p[0-9]{6}$') p),
          'V4_004 made the partitions of the months from the legacy cutoff on, at least two');
-- a month may have started since (the template is migrated once per session): the sweep's call brings them up to
-- date, as it does in production; then partitions for the current month (the legacy partition until its cutoff)
-- and the next three months
SELECT lives_ok($$SELECT sigledger.ensure_ledger_partitions(3)$$, 'the sweep brings the partitions up to the clock');
SELECT ok(sigledger._ledger_legacy_cutoff() > now()
          OR to_regclass('sigledger.llm_cost_log_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')) IS NOT NULL,
          'a partition holds the current month');
SELECT ok(to_regclass('sigledger.llm_cost_log_p'
                      || to_char(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 months', 'YYYYMM')) IS NOT NULL,
          'a partition exists three months ahead');
SELECT is(sigledger.ensure_ledger_partitions(3), 0, 'ensure_ledger_partitions is a no-op when they exist');
SELECT throws_ok($$SELECT sigledger.ensure_ledger_partitions(-1)$$, '22023', NULL, 'months_ahead is validated');

-- a row lands in the partition of its created_at, never in DEFAULT
SELECT sigledger.record_cost('part-1', :agent, 'm', 'p', 1, 1, 0.10) AS id1 \gset
SELECT isnt((SELECT tableoid::regclass::text FROM sigledger.llm_cost_log WHERE id = :id1),
            'sigledger.llm_cost_log_default', 'a row of now lands in a month partition, not DEFAULT');
SELECT is((SELECT count(*) FROM sigledger.llm_cost_log_default), 0::bigint, 'DEFAULT stays empty');
SELECT is((SELECT ledger_id FROM sigledger.llm_cost_log_key WHERE idempotency_key = 'part-1'), :id1::bigint,
          'the key is registered with the ledger id');

-- idempotency by key, globally
SELECT is(sigledger.record_cost('part-1', :agent, 'm', 'p', 1, 1, 0.10), :id1::bigint,
          'the same key through the API: idempotent replay, same id');
SELECT is((SELECT count(*) FROM sigledger.llm_cost_log WHERE idempotency_key = 'part-1'), 1::bigint,
          'one ledger row for the key');
SELECT throws_ok($$INSERT INTO sigledger.llm_cost_log_key (idempotency_key, ledger_id, created_at)
    VALUES ('part-1', -1, now())$$, '23505', NULL, 'a direct duplicate in the key registry is refused');
SELECT throws_ok($$INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd, created_at)
    VALUES ('part-1', '00000000-0000-0000-0000-00000000c201', 'm', 'p', 1, now() - interval '200 days')$$,
    '23505', NULL, 'a direct duplicate into another partition is refused by the registry trigger');

-- append-only on the partition too, for the owner
SELECT throws_ok(format('UPDATE %s SET cost_usd = 0 WHERE id = %s',
                        (SELECT tableoid::regclass FROM sigledger.llm_cost_log WHERE id = :id1), :id1),
                 '42501', 'llm_cost_log is append-only: UPDATE refused', 'UPDATE on a partition refused');
SELECT throws_ok(format('DELETE FROM %s WHERE id = %s',
                        (SELECT tableoid::regclass FROM sigledger.llm_cost_log WHERE id = :id1), :id1),
                 '42501', 'llm_cost_log is append-only: DELETE refused', 'DELETE on a partition refused');
SELECT throws_ok('TRUNCATE sigledger.llm_cost_log_legacy', '42501', 'llm_cost_log is append-only: TRUNCATE refused',
                 'TRUNCATE of a partition refused');

-- the app role: no privilege on any partition nor on the registry
SELECT is((SELECT count(*) FROM pg_inherits i
            WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass
              AND (has_table_privilege('sigledger_app', i.inhrelid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
                   OR has_table_privilege('sigledger_readonly', i.inhrelid, 'SELECT'))),
          0::bigint, 'the app and read-only roles have no privilege on any partition');
SELECT ok(NOT has_table_privilege('sigledger_app', 'sigledger.llm_cost_log_key', 'SELECT, INSERT, UPDATE, DELETE'),
          'the app role has no privilege on the key registry');

SELECT * FROM finish();
ROLLBACK;
