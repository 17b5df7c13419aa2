-- pgTAP: budget slices (set_budget_slices, the rebalance, frozen room, excess) and the batch calls
-- (reserve_budgets, settle_budgets). Concurrency is in tests/isolation (budget_slices_last_dollar,
-- budget_batch) and tests/budget/test_load.py (slices under 8 processes).
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(43);

SELECT has_function('sigledger', 'set_budget_slices', ARRAY['bigint', 'integer']);
SELECT has_function('sigledger', 'reserve_budgets', ARRAY['jsonb', 'interval', 'boolean']);
SELECT has_function('sigledger', 'settle_budgets', ARRAY['jsonb']);

SELECT sigledger.create_agent('sl-a', 1.00) AS a \gset
SELECT id AS ab FROM sigledger.budget WHERE agent_id = :'a' \gset
-- a period's caps always sum to the budget's cap (the total T of every rebalance)
CREATE TEMP VIEW caps AS
SELECT s.budget_id, s.period_start, sum(s.cap_usd + coalesce(s.frozen_usd, 0)) AS total, count(*) AS slices
  FROM sigledger.budget_spend s GROUP BY 1, 2;

SELECT throws_ok(format('SELECT sigledger.set_budget_slices(%s, 0)', :ab), '22023',
    'slices must be between 1 and 64, got 0', 'slices: 0 refused');
SELECT throws_ok(format('SELECT sigledger.set_budget_slices(%s, 65)', :ab), '22023', NULL, 'slices: 65 refused');
SELECT throws_ok('SELECT sigledger.set_budget_slices(987654, 2)', 'P0002', 'unknown budget 987654', 'slices: unknown budget');

SELECT lives_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.10)', :'a'), 'one slice: a hold');
SELECT is(sigledger.set_budget_slices(:ab, 4), 4, 'four slices, online');
SELECT results_eq(format('SELECT total, slices FROM caps WHERE budget_id = %s', :ab),
    $$VALUES (1.00::numeric, 4::bigint)$$, 'the current period split over 4 rows whose caps sum to the cap');
-- the last dollar is reachable whatever the slices hold: 0.30 three times, then exactly 0.60 more
SELECT lives_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.30)', :'a'), 'hold 0.30 (more than a slice''s share)');
SELECT lives_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.30)', :'a'), 'hold 0.30');
SELECT lives_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.29)', :'a'), 'hold 0.29');
SELECT results_eq(format('SELECT remaining_usd FROM sigledger.reserve_budget(%L, 0.01)', :'a'),
    $$VALUES (0::numeric)$$, 'the last cent, held on whichever slice');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.0000000001)', :'a'), 'SLB01',
    format('budget exceeded: agent %s asks 0.0000000001 USD, agent budget %s has 0 USD left', :'a', :ab),
    'refused only when the whole budget has no room');
SELECT results_eq(format('SELECT spent_usd, reserved_usd, remaining_usd FROM sigledger.budget_status(%L)', :'a'),
    $$VALUES (0::numeric, 1.00::numeric, 0::numeric)$$, 'status: the sums over the slices');
SELECT is((SELECT total FROM caps WHERE budget_id = :ab), 1.00::numeric, 'caps still sum to the cap');

-- settle below the estimate frees room; the next hold takes it even if it sits on another slice
SELECT lives_ok(format($$SELECT * FROM sigledger.settle_budget(
    (SELECT id FROM sigledger.budget_reservation WHERE agent_id = %L AND estimate_usd = 0.29), 0.09)$$, :'a'),
    'settle 0.29 at 0.09');
SELECT lives_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.20)', :'a'), 'the 0.20 freed is reachable');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.01)', :'a'), 'SLB01', NULL, 'and then the budget is full');

-- an overrun beyond the whole budget's room: excess is exactly what the budget is over its cap
SELECT lives_ok(format($$SELECT * FROM sigledger.settle_budget(
    (SELECT id FROM sigledger.budget_reservation WHERE agent_id = %L AND estimate_usd = 0.20), 0.50)$$, :'a'),
    'settle 0.20 at 0.50 (an overrun of 0.30 on a full budget)');
SELECT results_eq(format('SELECT spent_usd + reserved_usd - cap_usd, excess_usd FROM sigledger.budget_status(%L)', :'a'),
    $$VALUES (0.30::numeric, 0.30::numeric)$$, 'excess = the overspend of the whole budget');
SELECT ok(NOT EXISTS (SELECT 1 FROM sigledger.budget_spend WHERE budget_id = :ab
                       AND NOT (spent_usd + reserved_usd <= cap_usd + excess_usd)), 'every slice keeps its backstop');
-- over the cap, room a release frees on a slice is frozen, not handed out: still full until the debt is gone
SELECT lives_ok(format($$SELECT sigledger.release_budget(
    (SELECT min(id) FROM sigledger.budget_reservation WHERE agent_id = %L AND state = 'open'))$$, :'a'),
    'release 0.30');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.01)', :'a'), 'SLB01', NULL,
    'the 0.30 released only pays the 0.30 over the cap: nothing to hold');
SELECT is((SELECT total FROM caps WHERE budget_id = :ab), 1.00::numeric, 'caps + frozen still sum to the cap');

-- fewer slices: the ones above drain (no room), the room moves to the others
SELECT is(sigledger.set_budget_slices(:ab, 2), 2, 'back to two slices');
SELECT ok(NOT EXISTS (SELECT 1 FROM sigledger.budget_spend WHERE budget_id = :ab AND slice >= 2
                       AND cap_usd > spent_usd + reserved_usd), 'slices 2 and 3 keep no room');
SELECT throws_ok(format('SELECT * FROM sigledger.check_and_record_budget(%L, 0.01, 1)', :'a'), '22023', NULL,
    'expected_version cannot be compared on a sliced budget');

-- check_and_record_budget on a sliced budget: the same last-dollar rule (a short slice rebalances; refused only
-- when the whole budget has no room), the period's sums reported, the ledger and the spend equal
SELECT sigledger.create_agent('sl-c', 1.00) AS c \gset
SELECT id AS cb FROM sigledger.budget WHERE agent_id = :'c' \gset
SELECT is(sigledger.set_budget_slices(:cb, 4), 4, 'car: four slices');
SELECT results_eq(format('SELECT allowed, remaining_usd FROM sigledger.check_and_record_budget(%L, 0.30)', :'c'),
    $$VALUES (true, 0.70::numeric)$$, 'car: 0.30 (more than a slice''s share) allowed, the whole budget''s room reported');
SELECT results_eq(format('SELECT allowed FROM sigledger.check_and_record_budget(%L, 0.30) UNION ALL '
                         'SELECT allowed FROM sigledger.check_and_record_budget(%L, 0.30)', :'c', :'c'),
    $$VALUES (true), (true)$$, 'car: 0.30 twice more');
SELECT results_eq(format('SELECT allowed, remaining_usd FROM sigledger.check_and_record_budget(%L, 0.10)', :'c'),
    $$VALUES (true, 0::numeric)$$, 'car: the last dime, on whichever slice holds it');
SELECT results_eq(format('SELECT allowed, remaining_usd, ledger_id FROM sigledger.check_and_record_budget(%L, 0.0000000001)', :'c'),
    $$VALUES (false, 0::numeric, NULL::bigint)$$, 'car: refused only when the whole budget has no room');
SELECT results_eq(format('SELECT (SELECT sum(cost_usd) FROM sigledger.llm_cost_log WHERE agent_id = %L), '
                         '(SELECT sum(spent_usd) FROM sigledger.budget_spend WHERE budget_id = %s)', :'c', :cb),
    $$VALUES (1.00::numeric, 1.00::numeric)$$, 'car: ledger and spend both exactly the cap');
SELECT is((SELECT total FROM caps WHERE budget_id = :cb), 1.00::numeric, 'car: caps still sum to the cap');

-- reserve_budgets: one result per item, a bad or refused item holds nothing, the others are held
SELECT sigledger.create_agent('sl-b', 1.00) AS b \gset
SELECT results_eq(format($$SELECT ord, reservation_id IS NOT NULL, sqlstate FROM sigledger.reserve_budgets(
        jsonb_build_array(jsonb_build_object('agent_id', %L, 'estimate_usd', 0.4, 'idempotency_key', 'bk-1'),
                          jsonb_build_object('agent_id', 'nope', 'estimate_usd', 0.4),
                          jsonb_build_object('agent_id', %L, 'estimate_usd', 'NaN'),
                          jsonb_build_object('agent_id', %L, 'estimate_usd', 0.7),
                          jsonb_build_object('agent_id', %L, 'estimate_usd', 0.6)))$$, :'b', :'b', :'b', :'b'),
    $$VALUES (1, true, NULL::text), (2, false, '22P02'), (3, false, '22023'), (4, false, 'SLB01'), (5, true, NULL)$$,
    'per-item results: held, bad uuid, NaN, refused (0.7 asked, 0.6 left), held (0.6)');
SELECT is((SELECT reserved_usd FROM sigledger.budget_status(:'b')), 1.0::numeric, 'held: items 1 and 5');
SELECT is((SELECT count(*) FROM sigledger.budget_reservation WHERE agent_id = :'b'), 2::bigint,
    'a refused item leaves no reservation row');
SELECT results_eq(format($$SELECT replayed FROM sigledger.reserve_budgets(
        jsonb_build_array(jsonb_build_object('agent_id', %L, 'estimate_usd', 0.4, 'idempotency_key', 'bk-1')))$$, :'b'),
    $$VALUES (true)$$, 'the same key again: a replay');
SELECT throws_ok(format($$SELECT * FROM sigledger.reserve_budgets(
        jsonb_build_array(jsonb_build_object('agent_id', %L, 'estimate_usd', 0.1)), '1 minute', true)$$, :'b'),
    'SLB01', NULL, 'all_or_nothing: a refusal raises');
-- settle_budgets: per-item states
SELECT results_eq(format($$SELECT ord, sqlstate, actual_usd FROM sigledger.settle_budgets(
        jsonb_build_array(jsonb_build_object('reservation_id', (SELECT id FROM sigledger.budget_reservation WHERE idempotency_key = 'bk-1'), 'actual_usd', 0.25),
                          jsonb_build_object('reservation_id', 987654321),
                          jsonb_build_object('reservation_id', (SELECT id FROM sigledger.budget_reservation WHERE idempotency_key = 'bk-1'), 'actual_usd', 0.26),
                          jsonb_build_object('reservation_id', 'x')))$$),
    $$VALUES (1, NULL::text, 0.25::numeric), (2, 'P0002', NULL), (3, 'SLB03', NULL), (4, '22P02', NULL)$$,
    'settled, unknown, settled again at another actual, bad id');
SELECT results_eq(format('SELECT spent_usd, reserved_usd FROM sigledger.budget_status(%L)', :'b'),
    $$VALUES (0.25::numeric, 0.6::numeric)$$, 'one settled, one held');
SELECT is((SELECT count(*) FROM sigledger.reconcile_budgets()), 0::bigint, 'no drift, no ledger disagreement');

SELECT * FROM finish();
ROLLBACK;
