-- 162: the read API for budgets, agents, reservations and prices (issue 15). Read-only, like 160 (replicas).

-- _budget_current: every budget with its current period's row (limit, spend, holds, use of the limit).
-- used_ratio = (spent + reserved) / limit, NULL for a zero limit. The display name of an agent budget is the
-- agent's name (its budget is named agent:<id>).
-- The four period starts of now are computed once and picked per budget (what _period_start(period, now())
-- gives; tests/reports/test_read_api.py compares them): no function call per budget on the near-limit path.
-- PARALLEL SAFE (it only reads), so a query that calls it may still run in parallel.
CREATE OR REPLACE FUNCTION sigledger._budget_current()
RETURNS TABLE (budget_id bigint, level text, name text, agent_id uuid, parent_id bigint, period text,
               period_start timestamptz, limit_usd numeric, cap_usd numeric, spent_usd numeric,
               reserved_usd numeric, excess_usd numeric, used_ratio numeric, fail_policy text)
LANGUAGE sql
STABLE
PARALLEL SAFE
SET search_path = sigledger, pg_temp
AS $$
    WITH n AS (SELECT now() AT TIME ZONE 'UTC' AS utc),
    starts AS (
        SELECT timestamptz '1970-01-01 00:00:00+00' AS none_start,
               date_trunc('day', n.utc) AT TIME ZONE 'UTC' AS day_start,
               date_trunc('week', n.utc) AT TIME ZONE 'UTC' AS week_start,
               date_trunc('month', n.utc) AT TIME ZONE 'UTC' AS month_start
          FROM n
    ), bp AS (
        SELECT b.*, CASE b.period WHEN 'none' THEN st.none_start WHEN 'daily' THEN st.day_start
                                  WHEN 'weekly' THEN st.week_start WHEN 'monthly' THEN st.month_start END AS ps
          FROM sigledger.budget b CROSS JOIN starts st
    )
    SELECT b.id, b.level, coalesce(a.name, b.name), b.agent_id, b.parent_id, b.period, b.ps, b.limit_usd,
           coalesce(s.cap_usd, b.limit_usd * (1 + b.grace_ratio)), coalesce(s.spent_usd, 0),
           coalesce(s.reserved_usd, 0), coalesce(s.excess_usd, 0),
           CASE WHEN b.limit_usd > 0
                THEN round((coalesce(s.spent_usd, 0) + coalesce(s.reserved_usd, 0)) / b.limit_usd, 6) END,
           b.fail_policy
      FROM bp b
      LEFT JOIN sigledger.agent_registry a ON a.id = b.agent_id
      -- summed per budget and period: whatever number of rows a period keeps, the budget's figure is their sum
      LEFT JOIN (SELECT x.budget_id, x.period_start, sum(x.cap_usd) AS cap_usd, sum(x.spent_usd) AS spent_usd,
                        sum(x.reserved_usd) AS reserved_usd, sum(x.excess_usd) AS excess_usd
                   FROM sigledger.budget_spend x, starts st
                  WHERE x.period_start IN (st.none_start, st.day_start, st.week_start, st.month_start)
                  GROUP BY x.budget_id, x.period_start) s
        ON s.budget_id = b.id AND s.period_start = b.ps;
$$;

-- budget_tree: org -> team -> agent, depth first, siblings by name.
CREATE OR REPLACE FUNCTION sigledger.budget_tree()
RETURNS TABLE (depth integer, budget_id bigint, parent_id bigint, level text, name text, agent_id uuid,
               period text, period_start timestamptz, limit_usd numeric, spent_usd numeric, reserved_usd numeric,
               remaining_usd numeric, used_ratio numeric, fail_policy text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
    WITH RECURSIVE c AS (SELECT * FROM _budget_current()),
    t AS (
        SELECT c.*, 0 AS depth, ARRAY[c.name || chr(1) || c.budget_id::text] AS path
          FROM c WHERE c.parent_id IS NULL
        UNION ALL
        SELECT c.*, t.depth + 1, t.path || (c.name || chr(1) || c.budget_id::text)
          FROM c JOIN t ON c.parent_id = t.budget_id
         WHERE t.depth < 3
    )
    SELECT t.depth, t.budget_id, t.parent_id, t.level, t.name, t.agent_id, t.period, t.period_start, t.limit_usd,
           t.spent_usd, t.reserved_usd,
           CASE WHEN t.cap_usd IS NOT NULL THEN greatest(0, t.cap_usd - t.spent_usd - t.reserved_usd) END, t.used_ratio,
           t.fail_policy
      FROM t
     ORDER BY t.path;
$$;
COMMENT ON FUNCTION sigledger.budget_tree() IS
'Every budget, org -> team -> agent (depth first, siblings by name), with its current period: limit, spent,
reserved, remaining (to the cap, grace included), used_ratio = (spent + reserved) / limit (NULL for a zero
limit). Agent budgets are named after their agent. Raises nothing.';

-- budgets_near_limit: budgets at every level whose current use reaches p_threshold of the limit.
CREATE OR REPLACE FUNCTION sigledger.budgets_near_limit(p_threshold numeric DEFAULT 0.8, p_level text DEFAULT NULL)
RETURNS TABLE (budget_id bigint, level text, name text, agent_id uuid, parent_id bigint, period text,
               period_start timestamptz, limit_usd numeric, spent_usd numeric, reserved_usd numeric,
               used_ratio numeric, state text)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    PERFORM _assert_usd('threshold', p_threshold, 10);
    IF p_threshold = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'threshold must be greater than 0, got 0';
    END IF;
    IF p_level IS NOT NULL AND p_level NOT IN ('org', 'team', 'agent') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('level must be org, team or agent, got %L', left(p_level, 200));
    END IF;
    RETURN QUERY
    SELECT c.budget_id, c.level, c.name, c.agent_id, c.parent_id, c.period, c.period_start, c.limit_usd,
           c.spent_usd, c.reserved_usd, c.used_ratio,
           CASE WHEN c.spent_usd > c.limit_usd THEN 'over'
                WHEN c.spent_usd + c.reserved_usd >= c.limit_usd THEN 'at_limit'
                ELSE 'near' END
      FROM _budget_current() c
     WHERE (p_level IS NULL OR c.level = p_level)
       AND (c.used_ratio >= p_threshold OR (c.limit_usd = 0 AND c.spent_usd + c.reserved_usd > 0))
     ORDER BY c.used_ratio DESC NULLS FIRST, c.level, c.name;
END;
$$;
COMMENT ON FUNCTION sigledger.budgets_near_limit(numeric, text) IS
'Budgets (every level, or only level org|team|agent) whose current period''s spent + reserved reaches threshold
(a fraction of the limit in (0, 10], default 0.8), fullest first. state: over (spent above the limit: grace or
recorded excess), at_limit (spent + reserved at or above it), near.
SQLSTATE: 22004, 22023, 22003';

-- list_agents: every agent with its place in the hierarchy and its own budget's current period.
CREATE OR REPLACE FUNCTION sigledger.list_agents()
RETURNS TABLE (agent_id uuid, name text, created_at timestamptz, budget_id bigint, team text, org text,
               period text, limit_usd numeric, spent_usd numeric, reserved_usd numeric, used_ratio numeric,
               open_reservations bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
    SELECT a.id, a.name, a.created_at, h.agent_budget_id, h.team, h.org, c.period, c.limit_usd, c.spent_usd,
           c.reserved_usd, c.used_ratio, coalesce(r.n, 0)
      FROM agent_registry a
      JOIN _agent_hierarchy() h ON h.agent_id = a.id
      LEFT JOIN _budget_current() c ON c.budget_id = h.agent_budget_id
      LEFT JOIN (SELECT br.agent_id, count(*) AS n FROM budget_reservation br WHERE br.state = 'open'
                  GROUP BY br.agent_id) r ON r.agent_id = a.id
     ORDER BY a.name;
$$;
COMMENT ON FUNCTION sigledger.list_agents() IS
'Every agent by name: its budget (NULL: none), team and org above it, the current period of its own budget
(limit, spent, reserved, used_ratio) and its open reservations. Raises nothing.';

-- open_reservations: holds not yet settled, released or swept, soonest expiry first.
CREATE OR REPLACE FUNCTION sigledger.open_reservations(p_agent_id uuid DEFAULT NULL, p_limit integer DEFAULT 1000)
RETURNS TABLE (reservation_id bigint, agent_id uuid, agent text, idempotency_key text, estimate_usd numeric,
               created_at timestamptz, expires_at timestamptz, overdue boolean)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    PERFORM _assert_limit(p_limit, 100000);
    PERFORM _report_agents(p_agent_id, NULL);
    IF p_agent_id IS NULL THEN
        RETURN QUERY
        SELECT r.id, r.agent_id, a.name, r.idempotency_key, r.estimate_usd, r.created_at, r.expires_at,
               r.expires_at <= now()
          FROM budget_reservation r
          JOIN agent_registry a ON a.id = r.agent_id
         WHERE r.state = 'open'
         ORDER BY r.expires_at, r.id
         LIMIT p_limit;
    ELSE
        -- one agent's: a statement of its own, so that every plan (the generic one too, which an
        -- `p_agent_id IS NULL OR ...` test kept from any index on agent_id) reads the agent's entries of
        -- budget_reservation_agent_open_idx (V8_102), not every open reservation:
        -- tests/core/test_index_plans.py
        RETURN QUERY
        SELECT r.id, r.agent_id, a.name, r.idempotency_key, r.estimate_usd, r.created_at, r.expires_at,
               r.expires_at <= now()
          FROM budget_reservation r
          JOIN agent_registry a ON a.id = r.agent_id
         WHERE r.agent_id = p_agent_id AND r.state = 'open'
         ORDER BY r.expires_at, r.id
         LIMIT p_limit;
    END IF;
END;
$$;
COMMENT ON FUNCTION sigledger.open_reservations(uuid, integer) IS
'Open reservations (of one agent, or all), soonest expiry first, at most limit (1..100000). overdue: past its
expiry, its hold not yet released by the sweep (expire_reservations).
SQLSTATE: 22023, P0002';

-- overrun_report: settlements above their estimate, closed in [since, until).
CREATE OR REPLACE FUNCTION sigledger.overrun_report(
    p_since timestamptz, p_until timestamptz, p_agent_id uuid DEFAULT NULL, p_limit integer DEFAULT 1000)
RETURNS TABLE (reservation_id bigint, agent_id uuid, agent text, estimate_usd numeric, actual_usd numeric,
               overrun_usd numeric, ledger_id bigint, closed_at timestamptz)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    PERFORM _report_range(p_since, p_until);
    PERFORM _assert_limit(p_limit, 100000);
    PERFORM _report_agents(p_agent_id, NULL);
    IF p_agent_id IS NULL THEN
        -- budget_reservation_overrun_closed_idx: only overrun rows, by closed_at
        RETURN QUERY
        SELECT r.id, r.agent_id, a.name, r.estimate_usd, r.actual_usd, r.overrun_usd, r.ledger_id, r.closed_at
          FROM budget_reservation r
          JOIN agent_registry a ON a.id = r.agent_id
         WHERE r.overrun_usd > 0 AND r.closed_at >= p_since AND r.closed_at < p_until
         ORDER BY r.overrun_usd DESC, r.id
         LIMIT p_limit;
    ELSE
        -- one agent's: a statement of its own, so that every plan (the generic one too, which an
        -- `p_agent_id IS NULL OR ...` test kept from any index on agent_id) reads the agent's overruns of the
        -- range from budget_reservation_agent_overrun_idx (V8_105), not every agent's overruns of the range:
        -- tests/core/test_index_plans.py
        RETURN QUERY
        SELECT r.id, r.agent_id, a.name, r.estimate_usd, r.actual_usd, r.overrun_usd, r.ledger_id, r.closed_at
          FROM budget_reservation r
          JOIN agent_registry a ON a.id = r.agent_id
         WHERE r.agent_id = p_agent_id AND r.overrun_usd > 0 AND r.closed_at >= p_since AND r.closed_at < p_until
         ORDER BY r.overrun_usd DESC, r.id
         LIMIT p_limit;
    END IF;
END;
$$;
COMMENT ON FUNCTION sigledger.overrun_report(timestamptz, timestamptz, uuid, integer) IS
'Reservations settled in [since, until) whose actual cost exceeded the estimate, largest overrun first, at most
limit (1..100000).
SQLSTATE: 22004, 22023, P0002';

-- list_model_prices: the price table, current prices or the whole history.
CREATE OR REPLACE FUNCTION sigledger.list_model_prices(
    p_provider text DEFAULT NULL, p_model text DEFAULT NULL, p_history boolean DEFAULT false)
RETURNS TABLE (provider text, model text, valid_from timestamptz, valid_until timestamptz,
               input_usd_per_mtok numeric, output_usd_per_mtok numeric, current boolean)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
    SELECT x.provider, x.model, x.valid_from, x.valid_until, x.input_usd_per_mtok, x.output_usd_per_mtok,
           x.valid_from <= now() AND (x.valid_until IS NULL OR x.valid_until > now())
      FROM (SELECT p.*, lead(p.valid_from) OVER (PARTITION BY p.provider, p.model ORDER BY p.valid_from) AS valid_until
              FROM model_price p
             -- names are stored canonical (text rules, 005_text.sql): compare the canonical forms
             WHERE (p_provider IS NULL OR p.provider = _text_canon(p_provider))
               AND (p_model IS NULL OR p.model = _text_canon(p_model))) x
     WHERE coalesce(p_history, false)
        OR (x.valid_from <= now() AND (x.valid_until IS NULL OR x.valid_until > now()))
        OR x.valid_from > now()
     ORDER BY x.provider, x.model, x.valid_from;
$$;
COMMENT ON FUNCTION sigledger.list_model_prices(text, text, boolean) IS
'Prices (USD per million input/output tokens) by provider and model: the current one and any scheduled for
later, or every price ever with history => true. valid_until is the next price''s valid_from. Raises nothing.';
