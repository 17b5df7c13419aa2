-- pgTAP: record_costs charges its budgets as record_cost does (issue 13's set-based charge). Two identical worlds,
-- each a daily team budget over a monthly agent budget, plus an agent whose budget is split over 3 slices;
-- world x records every cost with record_cost, world y records the same costs in batches with record_costs.
-- Steps: the first charges of each period (rows missing: the per-charge path), charges that fit and cross
-- alert thresholds (the set-based path), charges beyond the cap (excess: the per-charge path), and the sliced
-- budget throughout. After every step both worlds hold the same spend, excess, cap, frozen room and next alert
-- boundary per budget and period (summed over slices), and the same alerts.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(9);

CREATE TEMP TABLE world (w text PRIMARY KEY, team bigint, agent uuid, sliced uuid) ON COMMIT DROP;
INSERT INTO world
SELECT w, t, sigledger.create_agent('bc-agent-' || w, 3, 'monthly', 0, 'closed', '{0.8,1.0}', t),
       sigledger.create_agent('bc-sliced-' || w, 2, 'none', 0, 'closed', '{0.5,1.0}')
  FROM (SELECT w, sigledger.create_group_budget('team', 'bc-team-' || w, 10, 'daily', 0, 'closed', '{0.3,0.5,0.8}') t
          FROM unnest(ARRAY['x', 'y']) w) g;
SELECT sigledger.set_budget_slices(b.id, 3) FROM sigledger.budget b JOIN world ON b.agent_id = world.sliced;

-- how often this transaction called _spend_apply (the per-charge path)
SET LOCAL track_functions = 'pl';
CREATE FUNCTION pg_temp.spend_apply_calls() RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions WHERE schemaname = 'sigledger' AND funcname = '_spend_apply'
$$;

-- one step: the same costs (agent, sliced agent) in both worlds, x one by one, y in one batch
CREATE FUNCTION pg_temp.step(p_step integer, p_agent numeric[], p_sliced numeric[]) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    x world;
    y world;
    v_batch jsonb := '[]';
    r record;
    v_calls bigint;
BEGIN
    SELECT * INTO x FROM world WHERE w = 'x';
    SELECT * INTO y FROM world WHERE w = 'y';
    FOR r IN SELECT c.cost, c.i, a.agent, a.which
               FROM (VALUES ('agent', 1), ('sliced', 2)) a(which, agent),
                    LATERAL unnest(CASE WHEN a.which = 'agent' THEN p_agent ELSE p_sliced END) WITH ORDINALITY c(cost, i)
    LOOP
        PERFORM sigledger.record_cost(format('bc-x-%s-%s-%s', p_step, r.which, r.i),
                                      CASE r.which WHEN 'agent' THEN x.agent ELSE x.sliced END, 'm', 'p', 1, 1, r.cost);
        v_batch := v_batch || jsonb_build_object('idempotency_key', format('bc-y-%s-%s-%s', p_step, r.which, r.i),
                                                 'agent_id', CASE r.which WHEN 'agent' THEN y.agent ELSE y.sliced END,
                                                 'model', 'm', 'provider', 'p', 'cost_usd', r.cost);
    END LOOP;
    v_calls := pg_temp.spend_apply_calls();
    SELECT * INTO r FROM sigledger.record_costs(v_batch);
    RETURN format('%s inserted, %s duplicates, %s quarantined, %s', r.inserted, r.duplicates, r.quarantined,
                  CASE WHEN pg_temp.spend_apply_calls() = v_calls THEN 'set-based' ELSE 'per charge' END);
END;
$$;

-- what a world's budgets hold, by role (team, agent, sliced) and period, summed over slices
CREATE FUNCTION pg_temp.held(p_w text) RETURNS TABLE (role text, period_start timestamptz, spent numeric,
                                                      excess numeric, total numeric, next_alert numeric, alerts text)
LANGUAGE sql AS $$
    SELECT CASE WHEN b.id = world.team THEN 'team' WHEN b.agent_id = world.agent THEN 'agent' ELSE 'sliced' END,
           s.period_start, sum(s.spent_usd), sum(s.excess_usd), sum(s.cap_usd + coalesce(s.frozen_usd, 0)),
           min(s.next_alert_usd) FILTER (WHERE s.slice = 0),
           (SELECT string_agg(a.threshold::text, ',' ORDER BY a.threshold) FROM sigledger.budget_alert a
             WHERE a.budget_id = b.id AND a.period_start = s.period_start)
      FROM world JOIN sigledger.budget b ON b.id = world.team OR b.agent_id IN (world.agent, world.sliced)
      JOIN sigledger.budget_spend s ON s.budget_id = b.id
     WHERE world.w = p_w
     GROUP BY 1, 2, b.id
$$;

SELECT is(pg_temp.step(1, '{1.0, 0.25}', '{0.5}'), '3 inserted, 0 duplicates, 0 quarantined, per charge',
    'step 1: the first charge of every period, one by one');
SELECT results_eq($$SELECT * FROM pg_temp.held('y') ORDER BY 1, 2$$, $$SELECT * FROM pg_temp.held('x') ORDER BY 1, 2$$,
    'step 1: the same spend, room and alerts as one record_cost per cost');
SELECT is(pg_temp.step(2, '{0.5, 0.75, 0.125}', '{}'), '3 inserted, 0 duplicates, 0 quarantined, set-based',
    'step 2: charges that fit, crossing the agent''s 0.8 threshold: set-based');
SELECT results_eq($$SELECT * FROM pg_temp.held('y') ORDER BY 1, 2$$, $$SELECT * FROM pg_temp.held('x') ORDER BY 1, 2$$,
    'step 2: the same');
SELECT is(pg_temp.step(3, '{1.5}', '{0.25, 1.5}'), '3 inserted, 0 duplicates, 0 quarantined, per charge',
    'step 3: beyond the agent''s and the sliced budget''s caps, crossing the team''s 0.3: one by one');
SELECT results_eq($$SELECT * FROM pg_temp.held('y') ORDER BY 1, 2$$, $$SELECT * FROM pg_temp.held('x') ORDER BY 1, 2$$,
    'step 3: the same, the part beyond the cap as excess');
SELECT is((SELECT excess FROM pg_temp.held('y') WHERE role = 'agent'), 1.125::numeric, 'the agent''s excess');
SELECT is((SELECT alerts FROM pg_temp.held('y') WHERE role = 'team'), '0.3', 'the team''s alert');
SELECT results_eq($$SELECT excess, alerts FROM pg_temp.held('y') WHERE role = 'sliced'$$,
    $$VALUES (0.25::numeric, '0.5,1.0'::text)$$, 'the sliced budget''s excess and alerts');

SELECT * FROM finish();
ROLLBACK;
