-- 120: agents and budget settings: create_agent, set_budget, create_group_budget, update_budget.

-- _budget_apply_settings: validates and stores settings of one budget (NULL = keep), then moves the cap of
-- its current and future period rows, locked in period order. A cap lowered below the spend turns the
-- difference into recorded excess (the backstop CHECK stays true; new holds are refused).
CREATE OR REPLACE FUNCTION sigledger._budget_apply_settings(
    p_budget_id bigint, p_limit_usd numeric, p_period text, p_grace_ratio numeric, p_fail_policy text,
    p_alert_thresholds numeric[], p_parent_budget_id bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    b sigledger.budget%ROWTYPE;
    v_parent_level text;
    v_cap numeric;
BEGIN
    SELECT * INTO b FROM sigledger.budget WHERE id = p_budget_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown budget %s', p_budget_id);
    END IF;
    IF p_limit_usd IS NOT NULL THEN
        b.limit_usd := sigledger._assert_usd('limit_usd', p_limit_usd, 1000000000);
    END IF;
    IF p_period IS NOT NULL THEN
        IF p_period NOT IN ('none', 'daily', 'weekly', 'monthly') THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('period must be none, daily, weekly or monthly, got %L', p_period);
        END IF;
        b.period := p_period;
    END IF;
    IF p_grace_ratio IS NOT NULL THEN
        PERFORM sigledger._assert_usd('grace_ratio', p_grace_ratio, 1);
        b.grace_ratio := p_grace_ratio;
    END IF;
    IF p_fail_policy IS NOT NULL THEN
        IF p_fail_policy NOT IN ('open', 'closed') THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('fail_policy must be open or closed, got %L', p_fail_policy);
        END IF;
        b.fail_policy := p_fail_policy;
    END IF;
    IF p_alert_thresholds IS NOT NULL THEN
        IF NOT sigledger._valid_alert_thresholds(p_alert_thresholds) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('alert_thresholds must be at most 10 fractions of the limit in (0, 10], got %s', p_alert_thresholds);
        END IF;
        b.alert_thresholds := p_alert_thresholds;
    END IF;
    IF p_parent_budget_id IS NOT NULL THEN
        SELECT level INTO v_parent_level FROM sigledger.budget WHERE id = p_parent_budget_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown parent budget %s', p_parent_budget_id);
        END IF;
        IF NOT ((b.level = 'agent' AND v_parent_level IN ('team', 'org')) OR (b.level = 'team' AND v_parent_level = 'org')) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('a %s budget cannot sit under a %s budget (%s)', b.level, v_parent_level, p_parent_budget_id);
        END IF;
        b.parent_id := p_parent_budget_id;
        b.parent_level := v_parent_level;
    END IF;
    UPDATE sigledger.budget
       SET limit_usd = b.limit_usd, period = b.period, grace_ratio = b.grace_ratio, fail_policy = b.fail_policy,
           alert_thresholds = b.alert_thresholds, parent_id = b.parent_id, parent_level = b.parent_level,
           updated_at = now()
     WHERE id = p_budget_id;
    v_cap := b.limit_usd * (1 + b.grace_ratio);
    -- current and future periods take the new cap; past periods keep theirs
    PERFORM 1 FROM sigledger.budget_spend s
      WHERE s.budget_id = p_budget_id AND s.period_start >= sigledger._period_start(b.period, now())
      ORDER BY s.period_start FOR UPDATE;
    UPDATE sigledger.budget_spend s
       SET cap_usd = v_cap,
           excess_usd = greatest(s.excess_usd, s.spent_usd + s.reserved_usd - v_cap)
     WHERE s.budget_id = p_budget_id AND s.period_start >= sigledger._period_start(b.period, now());
END;
$$;

-- create_agent: registers an agent and, when p_limit_usd is given, its budget.
CREATE OR REPLACE FUNCTION sigledger.create_agent(
    p_name text,
    p_limit_usd numeric DEFAULT NULL,
    p_period text DEFAULT 'none',
    p_grace_ratio numeric DEFAULT 0,
    p_fail_policy text DEFAULT 'closed',
    p_alert_thresholds numeric[] DEFAULT '{0.8,1.0}',
    p_parent_budget_id bigint DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_agent_id uuid;
BEGIN
    PERFORM _assert_text('name', p_name);
    IF p_limit_usd IS NULL AND p_parent_budget_id IS NOT NULL THEN
        -- refused rather than dropped: without a budget of its own the agent would not count against the parent
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('parent_budget_id %s needs limit_usd: an agent sits under a budget through a budget of its own',
                             p_parent_budget_id),
            HINT = 'Pass limit_usd (the agent''s own limit) with parent_budget_id.';
    END IF;
    INSERT INTO agent_registry (name) VALUES (p_name) RETURNING id INTO v_agent_id;
    IF p_limit_usd IS NOT NULL THEN
        PERFORM set_budget(v_agent_id, p_limit_usd, coalesce(p_period, 'none'), coalesce(p_grace_ratio, 0),
                           coalesce(p_fail_policy, 'closed'), coalesce(p_alert_thresholds, '{0.8,1.0}'),
                           p_parent_budget_id);
    END IF;
    RETURN v_agent_id;
END;
$$;
COMMENT ON FUNCTION sigledger.create_agent(text, numeric, text, numeric, text, numeric[], bigint) IS
'Registers an agent (name unique) and returns its id; with limit_usd also creates its budget (see set_budget),
under parent_budget_id if given (parent_budget_id without limit_usd: 22023).
SQLSTATE: 22004, 22023, 22003, 23505, P0002';

-- set_budget: creates or changes an agent's budget. NULL arguments keep the current value (defaults on creation:
-- period none, grace 0 = hard limit, fail_policy closed, alerts at 80% and 100%).
CREATE OR REPLACE FUNCTION sigledger.set_budget(
    p_agent_id uuid,
    p_limit_usd numeric DEFAULT NULL,
    p_period text DEFAULT NULL,
    p_grace_ratio numeric DEFAULT NULL,
    p_fail_policy text DEFAULT NULL,
    p_alert_thresholds numeric[] DEFAULT NULL,
    p_parent_budget_id bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    v_budget_id bigint;
BEGIN
    PERFORM 1 FROM agent_registry WHERE id = p_agent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown agent %s', p_agent_id);
    END IF;
    SELECT id INTO v_budget_id FROM budget WHERE agent_id = p_agent_id;
    IF NOT FOUND THEN
        IF p_limit_usd IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'limit_usd must not be NULL when creating a budget';
        END IF;
        PERFORM _assert_usd('limit_usd', p_limit_usd, 1000000000);
        INSERT INTO budget (level, name, agent_id, limit_usd)
        VALUES ('agent', 'agent:' || p_agent_id::text, p_agent_id, p_limit_usd)
        ON CONFLICT (agent_id) DO NOTHING
        RETURNING id INTO v_budget_id;
        IF v_budget_id IS NULL THEN
            SELECT id INTO v_budget_id FROM budget WHERE agent_id = p_agent_id;
        END IF;
    END IF;
    PERFORM _budget_apply_settings(v_budget_id, p_limit_usd, p_period, p_grace_ratio, p_fail_policy,
                                   p_alert_thresholds, p_parent_budget_id);
    RETURN v_budget_id;
END;
$$;
COMMENT ON FUNCTION sigledger.set_budget(uuid, numeric, text, numeric, text, numeric[], bigint) IS
'Creates or changes the budget of an agent and returns the budget id. NULL keeps the current value. period:
none|daily|weekly|monthly (UTC calendar periods, one spend row each). grace_ratio 0..1 (0 = hard limit).
fail_policy open|closed (what the harness does while the database is unreachable). alert_thresholds: fractions
of the limit. parent_budget_id: a team or org budget above it. A limit change applies to the current and
future periods.
SQLSTATE: 22004, 22023, 22003, P0002, 55P03';

-- create_group_budget: a team or organisation budget; agents (and teams) are attached with p_parent_budget_id.
CREATE OR REPLACE FUNCTION sigledger.create_group_budget(
    p_level text,
    p_name text,
    p_limit_usd numeric,
    p_period text DEFAULT 'none',
    p_grace_ratio numeric DEFAULT 0,
    p_fail_policy text DEFAULT 'closed',
    p_alert_thresholds numeric[] DEFAULT '{0.8,1.0}',
    p_parent_budget_id bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_budget_id bigint;
BEGIN
    IF p_level IS NULL OR p_level NOT IN ('team', 'org') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('level must be team or org, got %L', p_level);
    END IF;
    PERFORM _assert_text('name', p_name);
    PERFORM _assert_usd('limit_usd', p_limit_usd, 1000000000);
    INSERT INTO budget (level, name, limit_usd) VALUES (p_level, p_name, p_limit_usd) RETURNING id INTO v_budget_id;
    PERFORM _budget_apply_settings(v_budget_id, p_limit_usd, p_period, p_grace_ratio, p_fail_policy,
                                   p_alert_thresholds, p_parent_budget_id);
    RETURN v_budget_id;
END;
$$;
COMMENT ON FUNCTION sigledger.create_group_budget(text, text, numeric, text, numeric, text, numeric[], bigint) IS
'Creates a team or org budget (name unique per level) and returns its id. Reservations must fit at every level
above an agent.
SQLSTATE: 22004, 22023, 22003, 23505, P0002';

-- update_budget: changes any budget by id (team and org budgets included); NULL keeps the current value.
CREATE OR REPLACE FUNCTION sigledger.update_budget(
    p_budget_id bigint,
    p_limit_usd numeric DEFAULT NULL,
    p_period text DEFAULT NULL,
    p_grace_ratio numeric DEFAULT NULL,
    p_fail_policy text DEFAULT NULL,
    p_alert_thresholds numeric[] DEFAULT NULL,
    p_parent_budget_id bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
BEGIN
    PERFORM _budget_apply_settings(p_budget_id, p_limit_usd, p_period, p_grace_ratio, p_fail_policy,
                                   p_alert_thresholds, p_parent_budget_id);
END;
$$;
COMMENT ON FUNCTION sigledger.update_budget(bigint, numeric, text, numeric, text, numeric[], bigint) IS
'Changes the settings of a budget by id; NULL keeps the current value.
SQLSTATE: 22023, 22003, P0002, 55P03';

-- find_agent: the id of the agent with this name (P0002 when there is none).
CREATE OR REPLACE FUNCTION sigledger.find_agent(p_name text)
RETURNS uuid
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    SELECT a.id INTO v_id FROM agent_registry a WHERE a.name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown agent %L', p_name);
    END IF;
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION sigledger.find_agent(text) IS 'The id of the agent named name.
SQLSTATE: P0002';
