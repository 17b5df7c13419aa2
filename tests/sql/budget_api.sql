-- pgTAP: budgets. reserve/settle/release/expire, check_and_record_budget, levels, periods, alerts,
-- reconciliation, every validation path by SQLSTATE, the backstop constraints, and what the app role cannot do.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(98);

SELECT has_function('sigledger', 'reserve_budget', ARRAY['uuid', 'numeric', 'interval', 'text']);
SELECT has_function('sigledger', 'settle_budget', ARRAY['bigint', 'numeric', 'bigint', 'bigint', 'text', 'text', 'jsonb']);
SELECT has_function('sigledger', 'release_budget', ARRAY['bigint']);
SELECT has_function('sigledger', 'expire_reservations', ARRAY['integer']);
SELECT has_function('sigledger', 'check_and_record_budget', ARRAY['uuid', 'numeric', 'bigint', 'boolean']);
SELECT has_function('sigledger', 'budget_status', ARRAY['uuid']);
SELECT has_function('sigledger', 'reconcile_budgets', ARRAY['boolean']);

SELECT sigledger.create_agent('tap-a', 1.00) AS a \gset
SELECT sigledger.create_agent('tap-nobudget') AS nb \gset

-- validation by SQLSTATE, through the API
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, %L)', :'a', 'NaN'), '22023',
    'estimate_usd must be a finite number, got NaN', 'reserve: NaN');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, %L)', :'a', 'Infinity'), '22023', NULL, 'reserve: Infinity');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, %L)', :'a', '-Infinity'), '22023', NULL, 'reserve: -Infinity');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, %L)', :'a', '1e309'), '22003', NULL, 'reserve: 1e309');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, %L)', :'a', '-1'), '22023', NULL, 'reserve: negative');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, NULL)', :'a'), '22004', NULL, 'reserve: NULL estimate');
-- a zero hold always fits and settle charges the actual in full: N of them would overspend a hard budget
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0)', :'a'), '22023',
    'estimate_usd must be greater than 0, got 0', 'reserve: zero estimate');
-- an estimate finer than 1e-10 USD is refused, never rounded (to zero or otherwise)
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, %L)', :'a', '0.00000000001'), '22003',
    'estimate_usd must have at most 10 decimal places (1e-10 USD), got 0.00000000001', 'reserve: estimate finer than 1e-10');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, %L, %L, %L)', :'a', '-0.5', '1 minute', 'tap-neg'), '22023',
    'estimate_usd must not be negative, got -0.5', 'reserve: negative estimate names the value');
SELECT ok(NOT EXISTS (SELECT 1 FROM sigledger.budget_reservation WHERE agent_id = :'a')
          AND NOT EXISTS (SELECT 1 FROM sigledger.budget_spend s JOIN sigledger.budget b ON b.id = s.budget_id
                           WHERE b.agent_id = :'a' AND (s.spent_usd, s.reserved_usd) <> (0, 0)),
    'refused estimates left no reservation and no hold');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.1, %L)', :'a', '0 seconds'), '22023',
    'ttl must be greater than 0 and at most 7 days, got 00:00:00', 'reserve: zero ttl');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.1, %L)', :'a', '8 days'), '22023', NULL, 'reserve: ttl > 7 days');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.1, %L, %L)', :'a', '1 minute', ' '), '22023', NULL,
    'reserve: blank idempotency key');
SELECT throws_ok($$SELECT * FROM sigledger.reserve_budget('00000000-0000-0000-0000-00000000dead', 0.1)$$, 'P0002',
    'unknown agent 00000000-0000-0000-0000-00000000dead', 'reserve: unknown agent');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.1)', :'nb'), 'P0002',
    format('agent %s has no budget', :'nb'), 'reserve: agent without budget');
SELECT throws_ok(format('SELECT * FROM sigledger.check_and_record_budget(%L, %L)', :'a', 'NaN'), '22023', NULL, 'check_and_record: NaN');
SELECT throws_ok(format('SELECT * FROM sigledger.check_and_record_budget(%L, %L)', :'a', 'Infinity'), '22023', NULL, 'check_and_record: Infinity');
SELECT throws_ok(format('SELECT * FROM sigledger.check_and_record_budget(%L, %L)', :'a', '-Infinity'), '22023', NULL, 'check_and_record: -Infinity');
SELECT throws_ok(format('SELECT * FROM sigledger.check_and_record_budget(%L, %L)', :'a', '1e309'), '22003', NULL, 'check_and_record: 1e309');
SELECT throws_ok(format('SELECT sigledger.set_budget(%L, %L)', :'a', 'NaN'), '22023', NULL, 'set_budget: NaN limit');
SELECT throws_ok(format('SELECT sigledger.set_budget(%L, 1, %L)', :'a', 'hourly'), '22023',
    'period must be none, daily, weekly or monthly, got ''hourly''', 'set_budget: bad period');
SELECT throws_ok(format('SELECT sigledger.set_budget(%L, 1, NULL, %L)', :'a', 'Infinity'), '22023', NULL, 'set_budget: Infinity grace');
SELECT throws_ok(format('SELECT sigledger.set_budget(%L, 1, NULL, 2)', :'a'), '22003', NULL, 'set_budget: grace above 1');
SELECT throws_ok(format('SELECT sigledger.set_budget(%L, 1, NULL, NULL, %L)', :'a', 'maybe'), '22023', NULL, 'set_budget: bad fail policy');
SELECT throws_ok(format('SELECT sigledger.set_budget(%L, 1, NULL, NULL, NULL, %L)', :'a', '{0.5,NaN}'), '22023', NULL,
    'set_budget: NaN threshold');
SELECT throws_ok($$SELECT sigledger.create_group_budget('galaxy', 'g', 1)$$, '22023', 'level must be team or org, got ''galaxy''',
    'create_group_budget: bad level');
SELECT throws_ok($$SELECT * FROM sigledger.settle_budget(987654321, 0.1)$$, 'P0002', 'unknown reservation 987654321', 'settle: unknown');
SELECT throws_ok($$SELECT sigledger.release_budget(NULL)$$, '22004', NULL, 'release: NULL');
SELECT throws_ok($$SELECT sigledger.expire_reservations(0)$$, '22023', 'limit must be between 1 and 1000000, got 0', 'expire: bad limit');

-- reserve, idempotent replay, refusal with the remaining amount in DETAIL
SELECT reservation_id AS r1 FROM sigledger.reserve_budget(:'a', 0.40, '1 minute', 'tap-r1') \gset
SELECT results_eq(format($$SELECT reservation_id, replayed FROM sigledger.reserve_budget(%L, 0.40, '1 minute', 'tap-r1')$$, :'a'),
    format('VALUES (%s::bigint, true)', :r1), 'same key -> same reservation, replayed');
SELECT throws_ok(format($$SELECT * FROM sigledger.reserve_budget(%L, 0.50, '1 minute', 'tap-r1')$$, :'a'), '23505', NULL,
    'same key, other estimate -> 23505');
SELECT reservation_id AS r2 FROM sigledger.reserve_budget(:'a', 0.50, '1 minute', 'tap-r2') \gset
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.2)', :'a'), 'SLB01', NULL, 'the last dime does not fit: SLB01');
CREATE FUNCTION pg_temp.detail_of(p_sql text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE v text;
BEGIN
    EXECUTE p_sql;
    RETURN NULL;
EXCEPTION WHEN SQLSTATE 'SLB01' THEN
    GET STACKED DIAGNOSTICS v = PG_EXCEPTION_DETAIL;
    RETURN v;
END $f$;
SELECT alike(pg_temp.detail_of(format('SELECT * FROM sigledger.reserve_budget(%L, 0.2)', :'a')),
    'remaining_usd=0.1000000000 budget_id=% level=agent %', 'SLB01 DETAIL gives the remaining amount');
SELECT results_eq(format('SELECT spent_usd, reserved_usd FROM sigledger.budget_status(%L)', :'a'),
    $$VALUES (0::numeric, 0.9::numeric)$$, 'two holds, nothing spent');

-- settle: ledger row + release in one go, idempotent, overrun recorded
SELECT results_eq(format('SELECT actual_usd, overrun_usd, replayed FROM sigledger.settle_budget(%s, 0.30, 10, 20, %L, %L)', :r1, 'gpt-x', 'openai'),
    $$VALUES (0.300000::numeric, 0::numeric, false)$$, 'settle below the estimate');
SELECT results_eq(format('SELECT actual_usd, replayed FROM sigledger.settle_budget(%s, 0.30, 10, 20, %L, %L)', :r1, 'gpt-x', 'openai'),
    $$VALUES (0.3000000000::numeric, true)$$, 'settle again: same answer, replayed');
SELECT throws_ok(format('SELECT * FROM sigledger.settle_budget(%s, 0.31)', :r1), 'SLB03', NULL, 'settle again with another actual: SLB03');
SELECT is((SELECT count(*) FROM sigledger.llm_cost_log WHERE reservation_id = :r1), 1::bigint, 'one ledger row for the reservation');
SELECT results_eq(format('SELECT overrun_usd FROM sigledger.settle_budget(%s, 0.65)', :r2),
    $$VALUES (0.15::numeric)$$, 'an actual above the estimate is charged and reported as overrun');
SELECT results_eq(format('SELECT spent_usd, reserved_usd, excess_usd FROM sigledger.budget_status(%L)', :'a'),
    $$VALUES (0.95::numeric, 0::numeric, 0::numeric)$$, 'spend 0.30 + 0.65, no holds');
SELECT is((SELECT overrun_usd FROM sigledger.budget_overruns WHERE reservation_id = :r2), 0.15::numeric(20,10), 'overrun listed');
SELECT throws_ok(format('SELECT sigledger.release_budget(%s)', :r2), 'SLB03', NULL, 'release after settle: SLB03');

-- an overrun past the cap: recorded in full (the ledger tells the truth), the part above the cap is excess,
-- the 1.0 alert fires, and no reservation fits until the period ends
SELECT sigledger.create_agent('tap-overrun', 1.00, 'daily', 0, 'closed', '{1.0}') AS ov \gset
SELECT reservation_id AS r_ov FROM sigledger.reserve_budget(:'ov', 0.50) \gset
SELECT results_eq(format('SELECT actual_usd, overrun_usd FROM sigledger.settle_budget(%s, 1.5)', :r_ov),
    $$VALUES (1.5::numeric, 1.0::numeric)$$, 'overrun: the actual is recorded in full');
SELECT results_eq(format('SELECT spent_usd, reserved_usd, excess_usd, remaining_usd FROM sigledger.budget_status(%L)', :'ov'),
    $$VALUES (1.5::numeric, 0::numeric, 0.5::numeric, 0::numeric)$$, 'overrun: spent 1.5, 0.5 above the cap is excess');
SELECT is((SELECT count(*) FROM sigledger.budget_alerts WHERE agent_id = :'ov' AND threshold = 1.0), 1::bigint,
    'overrun: the 1.0 alert fired');
SELECT throws_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 0.01)', :'ov'), 'SLB01', NULL,
    'overrun: further reservations refused for the rest of the period');

-- release and expiry
SELECT sigledger.set_budget(:'a', 10);
SELECT reservation_id AS r3 FROM sigledger.reserve_budget(:'a', 1, '1 minute', 'tap-r3') \gset
SELECT is(sigledger.release_budget(:r3), 'released', 'release');
SELECT is(sigledger.release_budget(:r3), 'released', 'release is idempotent');
SELECT throws_ok(format('SELECT * FROM sigledger.settle_budget(%s, 0.1)', :r3), 'SLB03', NULL, 'settle after release: SLB03');
SELECT reservation_id AS r4 FROM sigledger.reserve_budget(:'a', 2, '1 minute', 'tap-r4') \gset
-- move the reservation into the past (as the owner) so that it is expired within this transaction
UPDATE sigledger.budget_reservation SET created_at = now() - interval '2 hours', expires_at = now() - interval '1 hour' WHERE id = :r4;
SELECT is(sigledger.expire_reservations(), 1, 'one reservation expired');
SELECT is(sigledger.expire_reservations(), 0, 'expiry is idempotent');
SELECT throws_ok(format('SELECT * FROM sigledger.settle_budget(%s, 0.1)', :r4), 'SLB02', NULL, 'settle after expiry: SLB02');
SELECT is(sigledger.release_budget(:r4), 'expired', 'release after expiry: no-op, says expired');
SELECT is((SELECT reserved_usd FROM sigledger.budget_status(:'a')), 0::numeric, 'holds back to zero');

-- check_and_record_budget: atomic, version, refusal changes nothing
SELECT version AS v0 FROM sigledger.budget_status(:'a') \gset
SELECT results_eq(format('SELECT allowed, version FROM sigledger.check_and_record_budget(%L, 1, %s)', :'a', :v0),
    format('VALUES (true, %s::bigint)', :v0 + 1), 'allowed with the current version; version bumped by the trigger');
SELECT throws_ok(format('SELECT * FROM sigledger.check_and_record_budget(%L, 1, %s)', :'a', :v0), 'SLV01',
    format('version conflict on agent %s: expected version %s, current version %s', :'a', :v0, :v0 + 1), 'stale version: SLV01');
SELECT results_eq(format('SELECT allowed FROM sigledger.check_and_record_budget(%L, 100)', :'a'), $$VALUES (false)$$,
    'over the limit: allowed = false');
SELECT is((SELECT spent_usd FROM sigledger.budget_status(:'a')), 1.95::numeric, 'the refusal changed nothing');

-- a cost recorded under the settle key while the settle could not run (outage): settling later charges it once
SELECT reservation_id AS r5 FROM sigledger.reserve_budget(:'a', 1, '1 minute', 'tap-r5') \gset
SELECT sigledger.record_cost('reservation:' || :r5, :'a', 'm', 'p', 0, 0, 0.7);
SELECT results_eq(format('SELECT actual_usd FROM sigledger.settle_budget(%s, 0.7)', :r5), $$VALUES (0.7::numeric)$$,
    'settle after the cost was recorded under its key reports that cost');
SELECT results_eq(format('SELECT spent_usd, reserved_usd FROM sigledger.budget_status(%L)', :'a'),
    $$VALUES (2.65::numeric, 0::numeric)$$, 'charged once (1.95 + 0.70), hold released');

-- team and org levels: a reservation must fit at every level; a refusal at one level leaves none held
SELECT sigledger.create_group_budget('org', 'tap-org', 5) AS org \gset
SELECT sigledger.create_group_budget('team', 'tap-team', 3, 'none', 0, 'closed', '{0.8,1.0}', :org) AS team \gset
SELECT sigledger.create_agent('tap-b', 100, 'daily', 0, 'open', '{0.5}', :team) AS b \gset
SELECT sigledger.create_agent('tap-c', 100, 'monthly', 0, 'closed', '{0.5}', :org) AS c \gset
SELECT is((SELECT array_agg(level ORDER BY level) FROM sigledger.budget_status(:'b')), ARRAY['agent', 'org', 'team'],
    'agent under team under org: three levels');
SELECT lives_ok(format('SELECT * FROM sigledger.reserve_budget(%L, 2.5)', :'b'), 'fits everywhere');
SELECT throws_like(format('SELECT * FROM sigledger.reserve_budget(%L, 1)', :'b'), '%team budget%', 'the team level refuses');
SELECT throws_like(format('SELECT * FROM sigledger.reserve_budget(%L, 3)', :'c'), '%org budget%', 'the org level refuses');
SELECT results_eq(format('SELECT level, reserved_usd FROM sigledger.budget_status(%L) ORDER BY level', :'b'),
    $$VALUES ('agent'::text, 2.5::numeric), ('org', 2.5), ('team', 2.5)$$, 'refused calls left no partial holds');
SELECT results_eq(format('SELECT allowed FROM sigledger.check_and_record_budget(%L, 0.6)', :'b'), $$VALUES (false)$$,
    'check_and_record refused at the team level');
SELECT results_eq(format('SELECT level, spent_usd FROM sigledger.budget_status(%L) ORDER BY level', :'b'),
    $$VALUES ('agent'::text, 0::numeric), ('org', 0), ('team', 0)$$, 'and the org level was not charged either');
SELECT is((SELECT period_start FROM sigledger.budget_status(:'b') WHERE level = 'agent'),
    date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', 'daily budget: one spend row per UTC day');

-- alerts: one row per budget, period and threshold
SELECT sigledger.create_agent('tap-alert', 1, 'none', 0, 'closed', '{0.5,0.8,1.0}') AS al \gset
SELECT sigledger.record_cost('al-1', :'al', 'm', 'p', 0, 0, 0.6);
SELECT sigledger.record_cost('al-2', :'al', 'm', 'p', 0, 0, 0.1);
SELECT sigledger.record_cost('al-3', :'al', 'm', 'p', 0, 0, 0.5);
SELECT results_eq(format('SELECT threshold FROM sigledger.budget_alerts WHERE agent_id = %L ORDER BY threshold', :'al'),
    $$VALUES (0.5::numeric), (0.8), (1.0)$$, 'each threshold crossed once, recorded cost above the cap included');
SELECT is((SELECT excess_usd FROM sigledger.budget_status(:'al')), 0.2::numeric, 'spend recorded after the fact above the cap is excess');

-- reconciliation: no drift, then drift made by hand (as the owner), reported, repaired
SELECT is((SELECT count(*) FROM sigledger.reconcile_budgets()), 0::bigint, 'no drift after all of the above');
UPDATE sigledger.budget_spend SET spent_usd = spent_usd + 0.25 WHERE budget_id = (SELECT id FROM sigledger.budget WHERE agent_id = :'a');
SELECT results_eq('SELECT spent_drift_usd, repaired FROM sigledger.reconcile_budgets()', $$VALUES (0.25::numeric, false)$$,
    'drift reported');
SELECT results_eq('SELECT spent_drift_usd, repaired FROM sigledger.reconcile_budgets(true)', $$VALUES (0.25::numeric, true)$$,
    'drift repaired');
SELECT is((SELECT count(*) FROM sigledger.reconcile_budgets()), 0::bigint, 'no drift after repair');

-- backstop: even the owner cannot push spent + reserved above cap + excess, nor holds below zero
SELECT throws_ok(format($$UPDATE sigledger.budget_spend SET reserved_usd = cap_usd + excess_usd - spent_usd + 0.01
    WHERE budget_id = (SELECT id FROM sigledger.budget WHERE agent_id = %L)$$, :'a'), '23514', NULL,
    'budget_spend_within_cap refuses an overspend');
SELECT throws_ok(format($$UPDATE sigledger.budget_spend SET reserved_usd = -1
    WHERE budget_id = (SELECT id FROM sigledger.budget WHERE agent_id = %L)$$, :'a'), '23514', NULL, 'negative holds refused');
SELECT throws_ok($$UPDATE sigledger.budget_spend SET spent_usd = 'NaN'$$, '23514', NULL, 'NaN spend refused');

-- injection strings in text arguments: stored verbatim or rejected, never executed
SELECT lives_ok($$SELECT sigledger.create_agent($n$x'); DROP TABLE sigledger.budget; --$n$, 1)$$, 'agent name with SQL');
SELECT lives_ok(format($$SELECT * FROM sigledger.reserve_budget(%L, 0.1, '1 minute', $k$k' OR 1=1; --$k$)$$, :'a'), 'key with SQL');
SELECT ok((SELECT count(*) = 1 FROM sigledger.agent_registry WHERE name = $n$x'); DROP TABLE sigledger.budget; --$n$)
          AND (SELECT count(*) = 1 FROM sigledger.budget_reservation WHERE idempotency_key = $k$k' OR 1=1; --$k$),
    'stored verbatim, tables intact');

SELECT reservation_id AS r6 FROM sigledger.reserve_budget(:'a', 0.01, '1 minute', 'tap-r6') \gset
SELECT lives_ok(format($$SELECT * FROM sigledger.settle_budget(%s, 0.01, 1, 1, $m$m'); DELETE FROM sigledger.budget_spend; --$m$,
    $p$p' UNION SELECT 1 --$p$, '{"k": "v'' OR 1=1"}')$$, :r6), 'settle: model, provider, metadata with SQL');
SELECT is((SELECT model || '|' || provider FROM sigledger.llm_cost_log WHERE reservation_id = :r6),
    $x$m'); DELETE FROM sigledger.budget_spend; --|p' UNION SELECT 1 --$x$, 'settle: stored verbatim');
SELECT lives_ok($$SELECT sigledger.create_group_budget('team', $n$t'; DROP TABLE sigledger.budget_spend; --$n$, 1)$$,
    'group budget name with SQL');
SELECT throws_ok(format($$SELECT sigledger.set_budget(%L, 1, $p$daily'; DROP TABLE x; --$p$)$$, :'a'), '22023', NULL,
    'a period with SQL is rejected');
SELECT throws_ok($$SELECT sigledger.find_agent($n$' OR '1'='1$n$)$$, 'P0002', NULL, 'find_agent with SQL: not found');
SELECT ok((SELECT count(*) > 0 FROM sigledger.budget_spend), 'budget_spend intact');

-- the app role cannot change spend, reservations or budgets directly
SET LOCAL ROLE sigledger_app;
SELECT throws_ok($$UPDATE sigledger.budget_spend SET spent_usd = 0$$, '42501', NULL, 'app: no UPDATE on budget_spend');
SELECT throws_ok($$UPDATE sigledger.budget_reservation SET state = 'released'$$, '42501', NULL, 'app: no UPDATE on reservations');
SELECT throws_ok($$UPDATE sigledger.budget SET limit_usd = 1e9$$, '42501', NULL, 'app: no UPDATE on budget');
SELECT throws_ok($$SELECT sigledger._spend_apply(1, now(), 1, 1, 0, -5, 0, false, 1, '{}')$$, '42501', NULL, 'app: internal helpers not executable');
SELECT lives_ok(format('SELECT * FROM sigledger.budget_status(%L)', :'a'), 'app: budget_status through the API');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
