-- 150: budget_status, reconcile_budgets, budget_alerts_after.

CREATE OR REPLACE FUNCTION sigledger.budget_status(p_agent_id uuid)
RETURNS TABLE (budget_id bigint, level text, name text, period text, period_start timestamptz,
               limit_usd numeric, grace_ratio numeric, cap_usd numeric, spent_usd numeric, reserved_usd numeric,
               excess_usd numeric, remaining_usd numeric, fail_policy text, version bigint,
               open_reservations bigint)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_agent_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'agent_id must not be NULL';
    END IF;
    PERFORM 1 FROM agent_registry a WHERE a.id = p_agent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown agent %s', p_agent_id);
    END IF;
    RETURN QUERY
    SELECT c.budget_id, c.level, b.name, b.period, c.period_start, b.limit_usd, b.grace_ratio,
           coalesce(s.cap_usd, c.cap_usd), coalesce(s.spent_usd, 0), coalesce(s.reserved_usd, 0),
           coalesce(s.excess_usd, 0),
           greatest(0, coalesce(s.cap_usd, c.cap_usd) - coalesce(s.spent_usd, 0) - coalesce(s.reserved_usd, 0)),
           b.fail_policy, coalesce(s.version, 0),
           (SELECT count(*) FROM budget_reservation r WHERE r.agent_id = p_agent_id AND r.state = 'open')
      FROM _budget_chain(p_agent_id, now()) c
      JOIN budget b ON b.id = c.budget_id
      LEFT JOIN budget_spend s ON s.budget_id = c.budget_id AND s.period_start = c.period_start
     ORDER BY c.lock_rank, c.budget_id;
END;
$$;
COMMENT ON FUNCTION sigledger.budget_status(uuid) IS
'The agent''s budgets for the current period, one row per level (org, team, agent): limit, grace, cap, spent,
reserved, excess (admitted above the cap after the fact), remaining, fail policy, version (the value
check_and_record_budget''s expected_version compares with at the agent level), open reservations.
No rows: the agent has no budget.
SQLSTATE: 22004, P0002';

-- _reconcile_expected: the spend and holds a (budget, period) row should carry, recomputed from the ledger
-- (costs of the agents under the budget whose charged_at falls in the period) and the open reservations.
CREATE OR REPLACE FUNCTION sigledger._reconcile_expected(p_budget_id bigint, p_period_start timestamptz,
                                                         OUT spent_usd numeric, OUT reserved_usd numeric)
LANGUAGE plpgsql
STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_period text;
BEGIN
    SELECT b.period INTO v_period FROM sigledger.budget b WHERE b.id = p_budget_id;
    SELECT coalesce(sum(l.cost_usd), 0) INTO spent_usd
      FROM sigledger.llm_cost_log l
     WHERE l.agent_id IN (
               SELECT a.agent_id FROM sigledger.budget a
                 LEFT JOIN sigledger.budget t ON t.id = a.parent_id
                WHERE a.level = 'agent' AND (a.id = p_budget_id OR a.parent_id = p_budget_id OR t.parent_id = p_budget_id))
       AND sigledger._period_start(v_period, l.charged_at) = p_period_start;
    SELECT coalesce(sum(r.estimate_usd), 0) INTO reserved_usd
      FROM sigledger.budget_reservation r
     WHERE r.state = 'open'
       AND EXISTS (SELECT 1 FROM unnest(r.budget_ids, r.period_starts) u(bid, ps)
                    WHERE u.bid = p_budget_id AND u.ps = p_period_start);
END;
$$;

CREATE OR REPLACE FUNCTION sigledger.reconcile_budgets(p_repair boolean DEFAULT false)
RETURNS TABLE (budget_id bigint, level text, period_start timestamptz, recorded_spent_usd numeric,
               ledger_spent_usd numeric, recorded_reserved_usd numeric, open_reserved_usd numeric,
               spent_drift_usd numeric, reserved_drift_usd numeric, repaired boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    x record;
    e record;
    v_cap numeric;
BEGIN
    IF p_repair IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'repair must not be NULL';
    END IF;
    IF p_repair AND current_setting('transaction_isolation') <> 'read committed' THEN
        -- the repair recomputes after locking each row and needs each statement to see the latest commits
        RAISE EXCEPTION USING ERRCODE = '25000',
            MESSAGE = format('reconcile_budgets(repair => true) needs READ COMMITTED, not %s',
                             current_setting('transaction_isolation'));
    END IF;
    FOR x IN
        WITH chain AS (
            SELECT a.agent_id, a.id AS budget_id, a.period FROM budget a WHERE a.level = 'agent'
            UNION ALL
            SELECT a.agent_id, p.id, p.period FROM budget a JOIN budget p ON p.id = a.parent_id WHERE a.level = 'agent'
            UNION ALL
            SELECT a.agent_id, g.id, g.period FROM budget a JOIN budget p ON p.id = a.parent_id
              JOIN budget g ON g.id = p.parent_id WHERE a.level = 'agent'
        ), led AS (
            SELECT c.budget_id, _period_start(c.period, l.charged_at) AS ps, sum(l.cost_usd) AS amount
              FROM llm_cost_log l JOIN chain c ON c.agent_id = l.agent_id
             GROUP BY 1, 2
        ), res AS (
            SELECT u.bid AS budget_id, u.ps, sum(r.estimate_usd) AS amount
              FROM budget_reservation r CROSS JOIN LATERAL unnest(r.budget_ids, r.period_starts) AS u(bid, ps)
             WHERE r.state = 'open'
             GROUP BY 1, 2
        ), keys AS (
            SELECT s.budget_id, s.period_start AS ps FROM budget_spend s
            UNION SELECT led.budget_id, led.ps FROM led
            UNION SELECT res.budget_id, res.ps FROM res
        )
        SELECT k.budget_id, b.level, k.ps,
               coalesce(s.spent_usd, 0) AS rec_spent, coalesce(led.amount, 0) AS led_spent,
               coalesce(s.reserved_usd, 0) AS rec_res, coalesce(res.amount, 0) AS open_res
          FROM keys k
          JOIN budget b ON b.id = k.budget_id
          LEFT JOIN budget_spend s ON s.budget_id = k.budget_id AND s.period_start = k.ps
          LEFT JOIN led ON led.budget_id = k.budget_id AND led.ps = k.ps
          LEFT JOIN res ON res.budget_id = k.budget_id AND res.ps = k.ps
         WHERE coalesce(s.spent_usd, 0) <> coalesce(led.amount, 0)
            OR coalesce(s.reserved_usd, 0) <> coalesce(res.amount, 0)
         ORDER BY CASE b.level WHEN 'org' THEN 0 WHEN 'team' THEN 1 ELSE 2 END, k.budget_id, k.ps
    LOOP
        budget_id := x.budget_id;
        level := x.level;
        period_start := x.ps;
        recorded_spent_usd := x.rec_spent;
        ledger_spent_usd := x.led_spent;
        recorded_reserved_usd := x.rec_res;
        open_reserved_usd := x.open_res;
        repaired := false;
        IF p_repair THEN
            -- lock the row, then recompute: a call in flight either committed before we got the lock (and is
            -- in the sums) or waits behind us and applies its own delta afterwards
            SELECT b.limit_usd * (1 + b.grace_ratio) INTO v_cap FROM budget b WHERE b.id = x.budget_id;
            PERFORM _spend_ensure(x.budget_id, x.ps, v_cap);
            PERFORM 1 FROM budget_spend s WHERE s.budget_id = x.budget_id AND s.period_start = x.ps FOR UPDATE;
            e := _reconcile_expected(x.budget_id, x.ps);
            UPDATE budget_spend s
               SET spent_usd = e.spent_usd, reserved_usd = e.reserved_usd,
                   excess_usd = greatest(s.excess_usd, e.spent_usd + e.reserved_usd - s.cap_usd)
             WHERE s.budget_id = x.budget_id AND s.period_start = x.ps;
            recorded_spent_usd := x.rec_spent;
            ledger_spent_usd := e.spent_usd;
            open_reserved_usd := e.reserved_usd;
            repaired := true;
        END IF;
        spent_drift_usd := recorded_spent_usd - ledger_spent_usd;
        reserved_drift_usd := recorded_reserved_usd - open_reserved_usd;
        RETURN NEXT;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION sigledger.reconcile_budgets(boolean) IS
'Recomputes each budget period''s spend from the ledger and its holds from the open reservations and returns
the rows that drift (recorded minus recomputed). repair => true also sets the recorded values (row by row, in
lock order, recomputed under the row lock; needs READ COMMITTED). Costs let through while the harness failed
open reach the ledger through the spool and are counted like any other cost.
SQLSTATE: 22004, 25000, 55P03';

CREATE OR REPLACE FUNCTION sigledger.budget_alerts_after(p_after_id bigint DEFAULT 0)
RETURNS SETOF sigledger.budget_alerts
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
    SELECT * FROM budget_alerts WHERE id > coalesce(p_after_id, 0) ORDER BY id;
$$;
COMMENT ON FUNCTION sigledger.budget_alerts_after(bigint) IS
'Budget alerts with id greater than after_id, oldest first (for watchers catching up after LISTEN); raises nothing.';
