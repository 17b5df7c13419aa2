-- pgTAP: a batch replayed quarantines nothing twice. The CostTracker sends a batch again when it did not get
-- the answer of the first flush (a timeout, a dropped connection after the commit): its valid rows are replays
-- by their keys, and its refused rows, each quarantined by the first flush, must not be quarantined again (before
-- V8_103 every replay added one more unresolved row per refused row: the operator's list and the
-- quarantine metric counted each bad cost once per retry). A refused row is the same row when it has the same
-- idempotency key and the same payload (cost_quarantine.replay_key, unique); the replay returns the same
-- counts as the first flush. Every way into the quarantine is covered: the set-based rules, a key that records
-- another cost (23505), a value that does not cast (the per-row path), a reservation key refused. A row without
-- a key has no identity: each flush of it is quarantined.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(16);

SELECT sigledger.create_agent('qr-a', 1000) AS a \gset

SELECT jsonb_build_array(
        jsonb_build_object('idempotency_key', 'qr-ok', 'agent_id', :'a', 'model', 'm', 'provider', 'p', 'cost_usd', 0.5),
        jsonb_build_object('idempotency_key', 'qr-neg', 'agent_id', :'a', 'model', 'm', 'provider', 'p', 'cost_usd', -1),
        jsonb_build_object('idempotency_key', 'qr-agent', 'agent_id', gen_random_uuid(), 'model', 'm', 'provider', 'p',
                           'cost_usd', 0.1),
        jsonb_build_object('idempotency_key', 'qr-ok', 'agent_id', :'a', 'model', 'm', 'provider', 'p', 'cost_usd', 0.7),
        jsonb_build_object('idempotency_key', 'reservation:999999999', 'agent_id', :'a', 'model', 'm', 'provider', 'p',
                           'cost_usd', 0.1)) AS rules \gset
SELECT jsonb_build_array(
        jsonb_build_object('idempotency_key', 'qr-cast', 'agent_id', :'a', 'model', 'm', 'provider', 'p',
                           'cost_usd', 'not a number')) AS cast_batch \gset
SELECT jsonb_build_array(
        jsonb_build_object('agent_id', :'a', 'model', 'm', 'provider', 'p', 'cost_usd', 0.1)) AS keyless \gset

SET LOCAL ROLE sigledger_app;
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$, :'rules'),
    $$VALUES (1, 0, 4)$$, 'first flush: 1 row in, 4 refused (a rule, an unknown agent, another cost, a reservation key)');
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$, :'rules'),
    $$VALUES (0, 1, 4)$$, 'the replay: the row is a replay, the same 4 rows reported quarantined');
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$, :'rules'),
    $$VALUES (0, 1, 4)$$, 'and again');
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$, :'cast_batch'),
    $$VALUES (0, 0, 1)$$, 'a value that does not cast: quarantined by the per-row path');
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$, :'cast_batch'),
    $$VALUES (0, 0, 1)$$, 'its replay reports it quarantined');
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$, :'keyless'),
    $$VALUES (0, 0, 1)$$, 'a row without a key');
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$, :'keyless'),
    $$VALUES (0, 0, 1)$$, 'a row without a key, again');
RESET ROLE;

SELECT results_eq(
    $$SELECT idempotency_key, sqlstate, count(*)::integer FROM sigledger.cost_quarantine
       GROUP BY 1, 2 ORDER BY idempotency_key COLLATE "C" NULLS LAST$$,
    $$VALUES ('qr-agent'::text, 'P0002'::text, 1), ('qr-cast', '22P02', 1), ('qr-neg', '22023', 1), ('qr-ok', '23505', 1),
             ('reservation:999999999', 'P0002', 1), (NULL, '22004', 2)$$,
    'one quarantine row per refused row of a key, whatever the number of flushes; a row without a key per flush');
SELECT is((SELECT count(*)::integer FROM sigledger.quarantine_list()), 7, 'the operator''s list: 7 unresolved');

-- resolved, the row stays the same row: a later replay of the batch does not reopen it
SELECT id AS qneg FROM sigledger.cost_quarantine WHERE idempotency_key = 'qr-neg' \gset
SET LOCAL ROLE sigledger_admin;
SELECT ok((SELECT ledger_id IS NOT NULL FROM sigledger.quarantine_resubmit(:qneg, '{"cost_usd": 1}')),
          'the negative cost resubmitted with a corrected cost');
RESET ROLE;
SET LOCAL ROLE sigledger_app;
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(%L)$$, :'rules'),
    $$VALUES (0, 1, 4)$$, 'the batch replayed after the resolution: the same answer');
RESET ROLE;
SELECT is((SELECT count(*)::integer FROM sigledger.cost_quarantine WHERE idempotency_key = 'qr-neg'), 1,
          'and no new quarantine row for the resolved one');

-- the same refused row in batches that take the per-row casts (another row does not cast) and in one that does
-- not, under two TimeZones: the casts rewrite the rows they pass on (created_at as text of the session's zone),
-- and the quarantine keeps the row as it was sent, so its replay_key is the same each time (the review's case:
-- 3 rows for one key before)
SELECT jsonb_build_object('idempotency_key', 'qr-future', 'agent_id', :'a', 'model', 'm', 'provider', 'p',
                          'cost_usd', 0.1, 'created_at', '2099-01-01T00:00:00+00:00') AS future \gset
SELECT jsonb_build_object('idempotency_key', 'qr-malformed', 'agent_id', 'not-a-uuid', 'model', 'm',
                          'provider', 'p', 'cost_usd', 0.1) AS malformed \gset
SET LOCAL ROLE sigledger_app;
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(jsonb_build_array(%L::jsonb))$$, :'future')
                  || format($$ UNION ALL SELECT * FROM sigledger.record_costs(jsonb_build_array(%L::jsonb, %L::jsonb))$$,
                            :'future', :'malformed'),
    $$VALUES (0, 0, 1), (0, 0, 2)$$, 'a future row alone, then beside a row that does not cast');
SET LOCAL TimeZone = 'Europe/Paris';
SELECT results_eq(format($$SELECT * FROM sigledger.record_costs(jsonb_build_array(%L::jsonb, %L::jsonb))$$,
                         :'future', :'malformed'),
    $$VALUES (0, 0, 2)$$, 'the same in another TimeZone');
RESET ROLE;
SELECT is((SELECT count(*)::integer FROM sigledger.cost_quarantine WHERE idempotency_key = 'qr-future'), 1,
          'one quarantine row for the future row');
SELECT is((SELECT payload ->> 'created_at' FROM sigledger.cost_quarantine WHERE idempotency_key = 'qr-future'),
          '2099-01-01T00:00:00+00:00', 'with the payload it was sent with');

SELECT * FROM finish();
ROLLBACK;
