-- pgTAP: record_costs' idempotency keys (issue 13's ledger batch path). Within a batch the first valid row of a
-- key is the row and later ones are replays of it (counted, or quarantined with 23505 when they record another
-- agent or cost: record_cost's rule and message, ledger_batch_sequential.sql); across batches a key the ledger holds is a replay when the agent and the given cost match,
-- else 23505 naming both. A key recorded by record_cost replays in record_costs and the other way round.
-- Every ledger row has exactly its key in the registry (llm_cost_log_key), and the budget is charged once per
-- inserted row, whichever path (the set-based one or the per-row casts of a batch holding a malformed value)
-- took the batch.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(23);

SELECT sigledger.create_agent('bk-a', 1000) AS a \gset
SELECT sigledger.create_agent('bk-b', 1000) AS b \gset
SELECT sigledger.add_model_price('bk-p', 'bk-m', 1, 2, now() - interval '1 day');

CREATE TEMP TABLE row_of (k text, agent uuid, cost numeric) ON COMMIT DROP;
CREATE FUNCTION pg_temp.batch(VARIADIC p_rows row_of[]) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object('idempotency_key', r.k, 'agent_id', r.agent, 'model', 'bk-m',
                                                          'provider', 'bk-p', 'input_tokens', 1000,
                                                          'output_tokens', 500, 'cost_usd', r.cost)))
      FROM unnest(p_rows) r
$$;

SET LOCAL ROLE sigledger_app;
-- 1. replays within one batch: k1 twice with the same cost, k2 twice with another cost, k3 priced (cost omitted)
--    twice, k4 twice with another agent
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$, pg_temp.batch(
        ('bk-1', :'a', 0.1)::row_of, ('bk-2', :'a', 0.2)::row_of, ('bk-1', :'a', 0.1)::row_of,
        ('bk-3', :'a', NULL)::row_of, ('bk-2', :'a', 0.3)::row_of, ('bk-3', :'a', NULL)::row_of,
        ('bk-4', :'a', 0.4)::row_of, ('bk-4', :'b', 0.4)::row_of)),
    $$VALUES (4, 2, 2)$$, 'in one batch: 4 keys inserted, 2 same replays counted, 2 conflicting replays quarantined');
RESET ROLE;
SELECT results_eq($$SELECT idempotency_key, sqlstate FROM sigledger.cost_quarantine ORDER BY id$$,
    $$VALUES ('bk-2'::text, '23505'::text), ('bk-4', '23505')$$, 'the conflicting replays, in batch order, with 23505');
-- (record_cost's message for the second of two calls: the first row is what the ledger holds then)
SELECT is((SELECT reason FROM sigledger.cost_quarantine WHERE idempotency_key = 'bk-2'),
    format('idempotency key ''bk-2'' already records 0.2 USD for agent %s (ledger %s), not 0.3 USD for agent %s',
           :'a', (SELECT id FROM sigledger.llm_cost_log WHERE idempotency_key = 'bk-2'), :'a'),
    'the reason names both costs and agents');
SELECT is((SELECT reason FROM sigledger.cost_quarantine WHERE idempotency_key = 'bk-4'),
    format('idempotency key ''bk-4'' already records 0.4 USD for agent %s (ledger %s), not 0.4 USD for agent %s',
           :'a', (SELECT id FROM sigledger.llm_cost_log WHERE idempotency_key = 'bk-4'), :'b'),
    'another agent under the same key is a conflict too');
SELECT results_eq($$SELECT idempotency_key, cost_usd, cost_source FROM sigledger.llm_cost_log
                     WHERE idempotency_key LIKE 'bk-%' ORDER BY idempotency_key$$,
    $$VALUES ('bk-1'::text, 0.1::numeric, 'client'::text), ('bk-2', 0.2, 'client'), ('bk-3', 0.002, 'price_table'),
             ('bk-4', 0.4, 'client')$$, 'one ledger row per key: the first occurrence, priced when the cost is omitted');
SELECT ok((SELECT bool_and(k.ledger_id = l.id AND k.reservation_id IS NULL AND k.created_at = l.created_at)
             FROM sigledger.llm_cost_log l JOIN sigledger.llm_cost_log_key k USING (idempotency_key)
            WHERE l.idempotency_key LIKE 'bk-%'), 'each row''s key is registered under its ledger id');
SELECT is((SELECT count(*) FROM sigledger.llm_cost_log_key WHERE idempotency_key LIKE 'bk-%'), 4::bigint,
    'and no other key is registered');
SELECT is((SELECT spent_usd FROM sigledger.budget_status(:'a')), 0.702::numeric, 'the budget charged once per row');
SELECT is((SELECT spent_usd FROM sigledger.budget_status(:'b')), 0::numeric, 'nothing charged to the other agent');

-- 2. replays across batches: same agent and cost (or cost omitted) -> duplicate; another cost or agent -> 23505
SELECT sigledger.record_cost('bk-single', :'a', 'bk-m', 'bk-p', 1, 1, 0.5) AS single_id \gset
SELECT id AS id4 FROM sigledger.llm_cost_log WHERE idempotency_key = 'bk-4' \gset
SET LOCAL ROLE sigledger_app;
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$, pg_temp.batch(
        ('bk-5', :'a', 1)::row_of, ('bk-1', :'a', 0.1)::row_of, ('bk-3', :'a', NULL)::row_of,
        ('bk-single', :'a', 0.5)::row_of, ('bk-4', :'b', 0.4)::row_of, ('bk-2', :'a', 0.25)::row_of,
        ('bk-6', :'b', 2)::row_of)),
    $$VALUES (2, 3, 2)$$, 'across batches: 2 new keys, 3 replays (one of a record_cost key), 2 conflicts');
RESET ROLE;
SELECT is((SELECT reason FROM sigledger.cost_quarantine WHERE idempotency_key = 'bk-4' ORDER BY id DESC LIMIT 1),
    format('idempotency key %L already records 0.4 USD for agent %s (ledger %s), not 0.4 USD for agent %s',
           'bk-4', :'a', :id4, :'b'), 'a stored key under another agent: 23505 naming both');
SELECT is((SELECT sqlstate FROM sigledger.cost_quarantine WHERE idempotency_key = 'bk-2' ORDER BY id DESC LIMIT 1),
    '23505', 'a stored key with another cost: 23505');
SELECT is((SELECT count(*) FROM sigledger.llm_cost_log WHERE idempotency_key LIKE 'bk-%'), 7::bigint,
    'ledger: 4 + 1 record_cost + 2 new rows');
SELECT is((SELECT spent_usd FROM sigledger.budget_status(:'a')), 2.202::numeric, 'agent a charged for its new row only');
SELECT is((SELECT spent_usd FROM sigledger.budget_status(:'b')), 2::numeric, 'agent b charged for its new row');
SELECT is(sigledger.record_cost('bk-5', :'a', 'bk-m', 'bk-p', 1000, 500, 1),
    (SELECT id FROM sigledger.llm_cost_log WHERE idempotency_key = 'bk-5'), 'record_cost replays a record_costs key');

-- 3. the same batch again (a spool replay): everything a duplicate or (the conflicts) quarantined again
SET LOCAL ROLE sigledger_app;
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$, pg_temp.batch(
        ('bk-5', :'a', 1)::row_of, ('bk-1', :'a', 0.1)::row_of, ('bk-6', :'b', 2)::row_of, ('bk-6', :'b', 2)::row_of)),
    $$VALUES (0, 4, 0)$$, 'a replayed batch inserts nothing');

-- 4. a batch holding a value that does not cast goes row by row; the keys behave the same
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$,
        pg_temp.batch(('bk-7', :'a', 0.7)::row_of, ('bk-7', :'a', 0.7)::row_of, ('bk-1', :'a', 0.1)::row_of,
                      ('bk-8', :'a', 0.8)::row_of, ('bk-8', :'a', 0.9)::row_of)
        || jsonb_build_array(jsonb_build_object('idempotency_key', 'bk-9', 'agent_id', 'not-a-uuid', 'model', 'm',
                                                'provider', 'p', 'cost_usd', 1))),
    $$VALUES (2, 2, 2)$$, 'with a malformed row: 2 inserted, 2 replays, the conflict and the malformed row quarantined');
RESET ROLE;
SELECT results_eq($$SELECT idempotency_key, sqlstate FROM sigledger.cost_quarantine
                     WHERE idempotency_key IN ('bk-8', 'bk-9') ORDER BY idempotency_key$$,
    $$VALUES ('bk-8'::text, '23505'::text), ('bk-9', '22P02')$$, 'each with its SQLSTATE');
SELECT ok((SELECT bool_and(k.ledger_id = l.id) AND count(*) = 9
             FROM sigledger.llm_cost_log l JOIN sigledger.llm_cost_log_key k USING (idempotency_key)
            WHERE l.idempotency_key LIKE 'bk-%'), 'every ledger row registered under its id');
SELECT is((SELECT spent_usd FROM sigledger.budget_status(:'a')), 3.702::numeric, 'charged for the two new rows');

-- 5. a batch whose keys keep being taken by concurrent batches (here: a trigger that says so on every insert)
--    is tried again with a new snapshot a bounded number of times, then refused whole with 40001 (retryable)
CREATE FUNCTION public.bk_always_taken() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '23505', MESSAGE = 'taken by a concurrent batch (test)';
END;
$$;
CREATE TRIGGER bk_always_taken BEFORE INSERT ON sigledger.llm_cost_log
    FOR EACH ROW EXECUTE FUNCTION public.bk_always_taken();
SET LOCAL ROLE sigledger_app;
SELECT throws_ok(format($$SELECT * FROM sigledger.record_costs(%L)$$, pg_temp.batch(('bk-10', :'a', 1)::row_of)),
    '40001', 'record_costs gave up after 5 attempts: keys of the batch kept being recorded by concurrent batches',
    'keys that keep being taken: 40001 after 5 attempts');
RESET ROLE;
DROP TRIGGER bk_always_taken ON sigledger.llm_cost_log;
SELECT is((SELECT count(*) FROM sigledger.llm_cost_log WHERE idempotency_key = 'bk-10'), 0::bigint, 'nothing recorded');

SELECT * FROM finish();
ROLLBACK;
