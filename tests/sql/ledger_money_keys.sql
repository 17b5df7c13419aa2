-- pgTAP: money held against any caller (issue 11 items 1, 2, 6; issue 15's budget semantics).
-- Reserved key spaces: reservation:<id> belongs to the settlement of reservation <id>, check:... to
-- check_and_record_budget, auto:... to reservations without a key; settle always charges its actual to its
-- own agent; reconcile_budgets reports ledger rows that disagree with their reservations. Amounts are exact
-- to 1e-10 USD or refused with 22003. One bad row of record_costs is quarantined, the others go in. An agent
-- may live under a team budget without a limit of its own; SLB01 names the tightest level.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(40);

SELECT sigledger.create_agent('mk-a', 10) AS a \gset
SELECT sigledger.create_agent('mk-b', 10) AS b \gset
SELECT nextval(pg_get_serial_sequence('sigledger.budget_reservation', 'id')) + 1 AS n \gset

-- issue 11 item 1, as the application role: a key in the settlement space cannot pre-empt a settlement
SET LOCAL ROLE sigledger_app;
SELECT throws_ok(format($$SELECT sigledger.record_cost('reservation:%s', %L, 'm', 'p', 0, 0, 0)$$, :n, :'a'),
    'P0002', format('unknown reservation %s', :n), 'record_cost under the key of a reservation that does not exist: P0002');
SELECT is((SELECT reservation_id FROM sigledger.reserve_budget(:'b', 7)), :n::bigint, 'the next reservation takes that id');
SELECT results_eq(format('SELECT actual_usd, replayed FROM sigledger.settle_budget(%s, 7)', :n),
    $$VALUES (7::numeric, false)$$, 'settle charges its actual');
SELECT is((SELECT spent_usd FROM sigledger.budget_status(:'b')), 7::numeric, 'to its own agent');
SELECT throws_ok(format($$SELECT sigledger.record_cost('reservation:%s', %L, 'm', 'p', 0, 0, 0)$$, :n, :'a'),
    '23505', format('idempotency key %L belongs to reservation %s of agent %s, not agent %s',
                    'reservation:' || :n, :n, :'b', :'a'),
    'another agent cannot record under a reservation''s key');
SELECT throws_like(format($$SELECT sigledger.record_cost('check:mine', %L, 'm', 'p', 0, 0, 1)$$, :'a'),
    '%key space check: that the database reserves%', 'check: keys are the database''s');
SELECT throws_like(format($$SELECT * FROM sigledger.reserve_budget(%L, 1, '1 minute', 'auto:mine')$$, :'a'),
    '%key space auto: reserved%', 'auto: reservation keys are the database''s');
SELECT throws_like(format($$SELECT sigledger.record_cost('reservation:x', %L, 'm', 'p', 0, 0, 1)$$, :'a'),
    '%key space reservation:%', 'reservation: keys that name no id are refused');
-- a cost recorded under its reservation's key by the reservation's own agent: the reservation is settled
SELECT reservation_id AS r2 FROM sigledger.reserve_budget(:'a', 2) \gset
SELECT is(sigledger.record_cost('reservation:' || :r2, :'a', 'm', 'p', 0, 0, 1.5),
          (SELECT ledger_id FROM sigledger.settle_budget(:r2, 1.5)), 'record under the key = settle; settle replays it');
SELECT results_eq(format('SELECT spent_usd, reserved_usd FROM sigledger.budget_status(%L)', :'a'),
    $$VALUES (1.5::numeric, 0::numeric)$$, 'charged once, hold released');
RESET ROLE;

-- a row an application wrote under a reservation key before the key space was reserved (here by the owner)
SELECT nextval(pg_get_serial_sequence('sigledger.budget_reservation', 'id')) + 1 AS m \gset
INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)
VALUES ('reservation:' || :m, :'a', 'm', 'p', 0);
SELECT is((SELECT reservation_id FROM sigledger.reserve_budget(:'b', 2)), :m::bigint, 'a reservation with that id');
SELECT results_eq(format('SELECT actual_usd, replayed FROM sigledger.settle_budget(%s, 2)', :m),
    $$VALUES (2::numeric, false)$$, 'settle still charges its actual');
SELECT results_eq(format($$SELECT agent_id, cost_usd, idempotency_key FROM sigledger.llm_cost_log WHERE reservation_id = %s$$, :m),
    format($$VALUES (%L::uuid, 2::numeric, 'reservation:%s:settlement'::text)$$, :'b', :m),
    'under a key of its own, to its own agent');
SELECT is((SELECT spent_usd FROM sigledger.budget_status(:'b')), 9::numeric, 'agent b spent 7 + 2');
SELECT ok(EXISTS (SELECT 1 FROM sigledger.reconcile_budgets() r
                   WHERE r.kind = 'ledger' AND r.reservation_id = :m AND r.detail LIKE '%reservation ' || :m || '%'),
    'reconcile_budgets reports the foreign row in the reservation''s key space');
-- the same agent's row under the key, written before the key space was reserved, with another amount
-- (issue 11.1): a settle with a different actual is refused naming both amounts and changes nothing (the
-- actual was recorded nowhere before); without an actual, or with that amount, the settle adopts the row
SELECT nextval(pg_get_serial_sequence('sigledger.budget_reservation', 'id')) + 1 AS m2 \gset
INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)
VALUES ('reservation:' || :m2, :'b', 'm', 'p', 0.25) RETURNING id AS old2 \gset
SELECT is((SELECT reservation_id FROM sigledger.reserve_budget(:'b', 0.4)), :m2::bigint, 'a reservation with that id');
SELECT throws_ok(format('SELECT * FROM sigledger.settle_budget(%s, 0.3)', :m2), '23505',
    format('reservation %s: its ledger key %L holds row %s of agent %s at 0.25 USD, written before the key space was reserved, not 0.3 USD',
           :m2, 'reservation:' || :m2, :old2, :'b'),
    'settle with another actual than the old row of the same agent: refused, naming both amounts');
SELECT results_eq(format('SELECT state, actual_usd FROM sigledger.budget_reservation WHERE id = %s', :m2),
    $$VALUES ('open'::text, NULL::numeric)$$, 'and nothing changed: the reservation is open');
SELECT results_eq(format('SELECT actual_usd, ledger_id FROM sigledger.settle_budget(%s, 0.25)', :m2),
    format('VALUES (0.25::numeric, %s::bigint)', :old2), 'with the old row''s amount it adopts the row');
SELECT ok(EXISTS (SELECT 1 FROM sigledger.reconcile_budgets() r
                   WHERE r.kind = 'ledger' AND r.ledger_id = :old2 AND r.detail LIKE '%written before%'),
    'reconcile_budgets lists the seed-era row in the reserved key space');
-- a ledger row that names a reservation of another agent (written by hand): reported
SELECT reservation_id AS r3 FROM sigledger.reserve_budget(:'b', 0.5) \gset
INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd, reservation_id)
VALUES ('by-hand', :'a', 'm', 'p', 0.5, :r3);
SELECT ok(EXISTS (SELECT 1 FROM sigledger.reconcile_budgets() r
                   WHERE r.kind = 'ledger' AND r.reservation_id = :r3 AND r.detail LIKE '%is agent%'),
    'reconcile_budgets reports a ledger row whose agent disagrees with its reservation');
SELECT ok(NOT EXISTS (SELECT 1 FROM sigledger.reconcile_budgets() r
                       WHERE r.kind = 'ledger' AND r.reservation_id IN (:n, :r2)),
    'settlements that agree are not reported');

-- issue 11 item 2: exact to 1e-10 USD, or refused with 22003 naming the value
SELECT sigledger.create_agent('mk-exact', 10) AS e \gset
SELECT reservation_id AS r4 FROM sigledger.reserve_budget(:'e', 0.01) \gset
SELECT is((SELECT actual_usd FROM sigledger.settle_budget(:r4, 0.0000001234)), 0.0000001234::numeric,
    'settle: 0.0000001234 reported as given');
SELECT is((SELECT cost_usd FROM sigledger.llm_cost_log WHERE reservation_id = :r4), 0.0000001234::numeric,
    'and stored as given (numeric(14,6) stored 0)');
SELECT reservation_id AS r5 FROM sigledger.reserve_budget(:'e', 0.02) \gset
SELECT lives_ok(format('SELECT * FROM sigledger.settle_budget(%s, 0.0123456789)', :r5), 'settle with 10 decimals');
SELECT results_eq(format('SELECT actual_usd, replayed FROM sigledger.settle_budget(%s, 0.0123456789)', :r5),
    $$VALUES (0.0123456789::numeric, true)$$, 'the retried settle is a replay, not SLB03');
SELECT throws_ok(format('SELECT * FROM sigledger.settle_budget(%s, 0.01234567891)', :r5), '22003',
    'actual_usd must have at most 10 decimal places (1e-10 USD), got 0.01234567891', 'settle: 11 decimals refused by name');
SELECT throws_ok(format($$SELECT sigledger.record_cost('mk-fine', %L, 'm', 'p', 0, 0, 0.00000000001)$$, :'e'), '22003',
    'cost_usd must have at most 10 decimal places (1e-10 USD), got 0.00000000001', 'record_cost: 11 decimals refused');
SELECT sigledger.record_cost('mk-small', :'e', 'm', 'p', 0, 0, 0.0000000002) AS small \gset
SELECT is((SELECT cost_usd FROM sigledger.llm_cost_log WHERE id = :small), 0.0000000002::numeric,
    'record_cost: 2e-10 stored as given');
SELECT throws_ok(format('SELECT * FROM sigledger.check_and_record_budget(%L, 0.00000000005)', :'e'), '22003', NULL,
    'check_and_record: finer than 1e-10 refused');
SELECT throws_ok(format('SELECT sigledger.set_budget(%L, 1.0000001)', :'e'), '22003',
    'limit_usd must have at most 6 decimal places, got 1.0000001', 'a limit finer than its column is refused, not rounded');
SELECT throws_ok($$SELECT sigledger.add_model_price('p', 'fine', 0.0000000001, 1)$$, '22003', NULL,
    'a price finer than its column is refused');

-- issue 11 item 6: a price x tokens product beyond the priced column is quarantined, the others go in
SELECT sigledger.add_model_price('p', 'huge', 100000, 100000, now() - interval '1 hour');
SELECT results_eq(
    format($$SELECT * FROM sigledger.record_costs(%L::jsonb)$$, jsonb_build_array(
        jsonb_build_object('idempotency_key', 'mk-ov-1', 'agent_id', :'e', 'model', 'huge', 'provider', 'p',
                           'input_tokens', 1000000000000, 'cost_usd', 1),
        jsonb_build_object('idempotency_key', 'mk-ov-2', 'agent_id', :'e', 'model', 'm', 'provider', 'p', 'cost_usd', 1))),
    $$VALUES (1, 0, 1)$$, 'record_costs: the overflowing row quarantined, the other inserted');
SELECT results_eq($$SELECT sqlstate, reason LIKE 'priced cost of 1000000000000 input + 0 output tokens of p/huge is %'
                      FROM sigledger.cost_quarantine WHERE idempotency_key = 'mk-ov-1'$$,
    $$VALUES ('22003'::text, true)$$, 'with its SQLSTATE and reason');

-- issue 15: an agent under a team budget without a limit of its own
SELECT sigledger.create_group_budget('team', 'mk-team', 5) AS t \gset
SELECT sigledger.create_agent('mk-member', NULL, 'none', 0, 'closed', '{0.8,1.0}', :t) AS mb \gset
SELECT results_eq(format('SELECT level, budget_id FROM sigledger.budget_status(%L)', :'mb'),
    format('VALUES (%L::text, %s::bigint)', 'team', :t), 'its budget status shows the team level only');
SELECT reservation_id AS r6 FROM sigledger.reserve_budget(:'mb', 1) \gset
SELECT ok(:r6 > 0, 'it can reserve');
SELECT lives_ok(format('SELECT * FROM sigledger.settle_budget(%s, 0.75)', :r6), 'it can settle');
SELECT results_eq(format('SELECT spent_usd, reserved_usd FROM sigledger.budget_status(%L)', :'mb'),
    $$VALUES (0.75::numeric, 0::numeric)$$, 'charged at the team level');

-- issue 15: SLB01 names the tightest level, not the first one that refuses (lock order org -> team -> agent)
SELECT sigledger.create_group_budget('org', 'mk-org', 2) AS o \gset
SELECT sigledger.create_group_budget('team', 'mk-team2', 1, 'none', 0, 'closed', '{0.8,1.0}', :o) AS t2 \gset
SELECT sigledger.create_agent('mk-deep', 100, 'none', 0, 'closed', '{0.8,1.0}', :t2) AS d \gset
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 2.5)', :'d'), 'SLB01',
    format('budget exceeded: agent %s asks 2.5 USD, team budget %s has 1.0000000000 USD left', :'d', :t2),
    'the team (1 left) is named, though the org (2 left) refused first');
SELECT ok(NOT EXISTS (SELECT 1 FROM sigledger.budget_status(:'d') WHERE reserved_usd <> 0), 'nothing held');

SELECT * FROM finish();
ROLLBACK;
