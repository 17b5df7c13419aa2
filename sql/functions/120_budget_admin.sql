-- 120: agents and budget settings: create_agent, set_budget, create_group_budget, update_budget.

-- _budget_require_read_committed: 25000 unless the transaction is READ COMMITTED. A settings change of an
-- existing budget (set_budget, update_budget, set_budget_slices) re-caps the budget's current and future
-- periods: those whose rows it sees once it holds the budget row. A period created by a charge that committed
-- after the transaction's snapshot was taken (while the change waited for the budget row, which the creating
-- charge holds FOR SHARE: _spend_ensure, 101) is visible to a READ COMMITTED statement, but not to a REPEATABLE
-- READ or SERIALIZABLE snapshot, and no error tells (a lock of a row updated meanwhile raises 40001; an insert
-- made meanwhile is simply not seen): the period would keep the cap the change replaces (isolation spec
-- budget_settings_repeatable_read). So those calls refuse any other isolation level, and so does
-- reconcile_budgets(repair) (150), whose recomputation after each lock needs each statement to see the latest
-- commits. A new budget (create_group_budget, set_budget of an agent without one, create_agent) has no period a
-- charge can have created: no refusal.
CREATE OR REPLACE FUNCTION sigledger._budget_require_read_committed(p_call text)
RETURNS void
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION USING ERRCODE = '25000',
            MESSAGE = format('%s needs READ COMMITTED, not %s', p_call, current_setting('transaction_isolation')),
            HINT = 'Run it in a READ COMMITTED transaction (the default): under REPEATABLE READ or SERIALIZABLE its '
                   || 'statements cannot see what other transactions committed since it began.';
    END IF;
END;
$$;

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
    v_period timestamptz;
    v_room numeric;
BEGIN
    -- Lock order with the charges: this locks the budget row, then (in _spend_rebalance) its spend rows. A charge
    -- locks its spend rows and then, in later statements of its transaction, checks foreign keys to this row with
    -- FOR KEY SHARE (its budget_alert insert, _spend_crossed's update, any second update of a spend row it
    -- already changed: PostgreSQL re-checks the key of a row version its own transaction wrote). FOR NO KEY
    -- UPDATE does not conflict with FOR KEY SHARE (FOR UPDATE does: 40P01, isolation spec
    -- budget_set_budget_vs_alert), so a charge never waits for this lock while holding a spend row: the only
    -- order is budget row -> spend rows, and settings changes of one budget still queue on it one at a time.
    -- A period created while this runs: the charge that creates it reads the cap under FOR SHARE on this row
    -- (_spend_ensure, 101), which conflicts with FOR NO KEY UPDATE. Either it got there first and this waits
    -- for it to commit, so the period scan below (a statement after the wait: READ COMMITTED) sees its rows and
    -- re-caps them; or this holds the row and the creation waits for this to commit, then reads the new cap.
    -- So no period's rows commit with the cap this replaces after this commits (isolation spec
    -- budget_period_create_vs_set_budget; before, they could, and kept it until the next change). The creating
    -- charge holds no spend row of this budget when it asks for FOR SHARE (a budget's row comes before its spend
    -- rows in the lock order: 101), so this, waiting for spend rows, never waits for a charge that waits for it.
    -- That period scan needs READ COMMITTED: a caller that changes an existing budget refuses any other level
    -- first (_budget_require_read_committed); a budget created by the caller's transaction has no period yet.
    SELECT * INTO b FROM sigledger.budget WHERE id = p_budget_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown budget %s', p_budget_id);
    END IF;
    IF p_limit_usd IS NOT NULL THEN
        b.limit_usd := sigledger._assert_exact('limit_usd', sigledger._assert_usd('limit_usd', p_limit_usd, 1000000000), 6);
    END IF;
    IF p_period IS NOT NULL THEN
        IF p_period NOT IN ('none', 'daily', 'weekly', 'monthly') THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('period must be none, daily, weekly or monthly, got %s', sigledger._text_quote(p_period));
        END IF;
        b.period := p_period;
    END IF;
    IF p_grace_ratio IS NOT NULL THEN
        b.grace_ratio := sigledger._assert_exact('grace_ratio', sigledger._assert_usd('grace_ratio', p_grace_ratio, 1), 4);
    END IF;
    IF p_fail_policy IS NOT NULL THEN
        IF p_fail_policy NOT IN ('open', 'closed') THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('fail_policy must be open or closed, got %s', sigledger._text_quote(p_fail_policy));
        END IF;
        b.fail_policy := p_fail_policy;
    END IF;
    IF p_alert_thresholds IS NOT NULL THEN
        IF NOT sigledger._valid_alert_thresholds(p_alert_thresholds) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('alert_thresholds must be at most 10 fractions of the limit in (0, 10], got %s',
                                 sigledger._text_list(p_alert_thresholds::text[]));
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
    IF b.limit_usd IS NULL THEN
        RETURN;  -- an agent level without a limit of its own has no spend rows
    END IF;
    v_cap := b.limit_usd * (1 + b.grace_ratio);
    -- current and future periods take the new cap, period by period in lock order, split over their slices
    -- (a cap lowered below the spend turns the difference into recorded excess); past periods keep theirs
    FOR v_period IN
        SELECT DISTINCT s.period_start FROM sigledger.budget_spend s
         WHERE s.budget_id = p_budget_id AND s.period_start >= sigledger._period_start(b.period, now())
         ORDER BY s.period_start
    LOOP
        v_room := sigledger._spend_rebalance(p_budget_id, v_period, b.slices, 0, 0, true, v_cap);
    END LOOP;
    -- the alert boundaries follow the new limit and thresholds: recomputed at each period's next charge
    UPDATE sigledger.budget_spend s SET next_alert_usd = NULL
     WHERE s.budget_id = p_budget_id AND s.period_start >= sigledger._period_start(b.period, now())
       AND s.next_alert_usd IS NOT NULL;
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
    p_name := _assert_text('name', p_name);
    INSERT INTO agent_registry (name) VALUES (p_name) RETURNING id INTO v_agent_id;
    -- a limit, or a team/org budget to live under (a budget row without a limit of its own), or neither
    IF p_limit_usd IS NOT NULL OR p_parent_budget_id IS NOT NULL THEN
        PERFORM set_budget(v_agent_id, p_limit_usd, coalesce(p_period, 'none'), coalesce(p_grace_ratio, 0),
                           coalesce(p_fail_policy, 'closed'), coalesce(p_alert_thresholds, '{0.8,1.0}'),
                           p_parent_budget_id);
    END IF;
    RETURN v_agent_id;
END;
$$;
COMMENT ON FUNCTION sigledger.create_agent(text, numeric, text, numeric, text, numeric[], bigint) IS
'Registers an agent (name unique; trimmed of whitespace and format characters, NFC, at most 200 characters and
800 bytes) and returns its id; with limit_usd also creates its budget (see set_budget);
with parent_budget_id and no limit_usd the agent lives under that team or org budget without a limit of its own.
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
    v_parent_level text;
BEGIN
    PERFORM 1 FROM agent_registry WHERE id = p_agent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown agent %s', p_agent_id);
    END IF;
    SELECT id INTO v_budget_id FROM budget WHERE agent_id = p_agent_id;
    IF FOUND THEN
        -- a change of an existing budget re-caps its periods: READ COMMITTED only (_budget_require_read_committed)
        PERFORM _budget_require_read_committed('set_budget of an existing budget');
    ELSE
        IF p_limit_usd IS NULL AND p_parent_budget_id IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'limit_usd must not be NULL when creating a budget',
                HINT = 'Give a limit, or a parent_budget_id (a team or org budget) for an agent without a limit of its own.';
        END IF;
        IF p_limit_usd IS NOT NULL THEN
            PERFORM _assert_exact('limit_usd', _assert_usd('limit_usd', p_limit_usd, 1000000000), 6);
        ELSE
            -- no limit of its own: the row must name its parent from the start (budget_limit_usd_required)
            SELECT level INTO v_parent_level FROM budget WHERE id = p_parent_budget_id;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown parent budget %s', p_parent_budget_id);
            END IF;
            IF v_parent_level NOT IN ('team', 'org') THEN
                RAISE EXCEPTION USING ERRCODE = '22023',
                    MESSAGE = format('a agent budget cannot sit under a %s budget (%s)', v_parent_level, p_parent_budget_id);
            END IF;
        END IF;
        INSERT INTO budget (level, name, agent_id, limit_usd, parent_id, parent_level)
        VALUES ('agent', 'agent:' || p_agent_id::text, p_agent_id, p_limit_usd,
                CASE WHEN p_limit_usd IS NULL THEN p_parent_budget_id END,
                CASE WHEN p_limit_usd IS NULL THEN v_parent_level END)
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
of the limit. parent_budget_id: a team or org budget above it; created with a parent and no limit, the agent
has no limit of its own (its spending counts against the parent''s levels only). A limit change applies to the
current and future periods, a period whose first charge runs meanwhile included (one waits for the other);
so a change of an existing budget needs READ COMMITTED (the default; otherwise 25000).
Amounts are stored exactly: limit_usd at most 6 decimal places, grace_ratio 4 (finer: 22003).
SQLSTATE: 22004, 22023, 22003, 25000, P0002, 55P03';

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
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('level must be team or org, got %s', _text_quote(p_level));
    END IF;
    p_name := _assert_text('name', p_name);
    PERFORM _assert_exact('limit_usd', _assert_usd('limit_usd', p_limit_usd, 1000000000), 6);
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
    PERFORM _budget_require_read_committed('update_budget');
    PERFORM _budget_apply_settings(p_budget_id, p_limit_usd, p_period, p_grace_ratio, p_fail_policy,
                                   p_alert_thresholds, p_parent_budget_id);
END;
$$;
COMMENT ON FUNCTION sigledger.update_budget(bigint, numeric, text, numeric, text, numeric[], bigint) IS
'Changes the settings of a budget by id; NULL keeps the current value. A limit change applies to the current and
future periods, as set_budget''s; needs READ COMMITTED (the default; otherwise 25000).
SQLSTATE: 22023, 22003, 25000, P0002, 55P03';

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
    -- names are stored canonical (text rules, 005): look the canonical form up
    SELECT a.id INTO v_id FROM agent_registry a WHERE a.name = _text_canon(p_name);
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown agent %s', _text_quote(p_name));
    END IF;
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION sigledger.find_agent(text) IS 'The id of the agent named name (compared in canonical form: surrounding whitespace and format characters ignored, NFC).
SQLSTATE: P0002';

-- set_budget_slices: splits a budget's periods over p_slices spend rows (1..64), online. The current and future
-- periods that have rows are re-split at once (their rows locked in slice order, new slices created); a lowered
-- count leaves the rows above it draining (no room; their open reservations settle or release there).
-- Its UPDATE locks the budget row FOR NO KEY UPDATE, as _budget_apply_settings does, with the same order
-- against a period created meanwhile: that period gets the new count either way (in READ COMMITTED, which it
-- needs for that: _budget_require_read_committed).
CREATE OR REPLACE FUNCTION sigledger.set_budget_slices(p_budget_id bigint, p_slices integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    b budget%ROWTYPE;
    v_period timestamptz;
    v_room numeric;
    v_created integer;
BEGIN
    IF p_slices IS NULL OR p_slices < 1 OR p_slices > 64 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('slices must be between 1 and 64, got %s', coalesce(p_slices::text, 'NULL'));
    END IF;
    PERFORM _budget_require_read_committed('set_budget_slices');
    UPDATE budget SET slices = p_slices, updated_at = now() WHERE id = p_budget_id RETURNING * INTO b;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown budget %s', p_budget_id);
    END IF;
    IF b.limit_usd IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('budget %s has no limit of its own: nothing to split', p_budget_id);
    END IF;
    FOR v_period IN
        SELECT DISTINCT s.period_start FROM budget_spend s
         WHERE s.budget_id = p_budget_id AND s.period_start >= _period_start(b.period, now())
         ORDER BY s.period_start
    LOOP
        -- the new slices (nobody holds them yet), then every slice of the period in order
        v_created := _spend_ensure(p_budget_id, v_period, b.limit_usd * (1 + b.grace_ratio), p_slices);
        v_room := _spend_rebalance(p_budget_id, v_period, p_slices, 0, 0, true);
        -- slice 0's alert boundary was not kept while the period was sliced, and the period's spend is the sum of
        -- its rows while any above 0 remain: recomputed by the next charge (_spend_crossed)
        UPDATE budget_spend s SET next_alert_usd = NULL
         WHERE s.budget_id = p_budget_id AND s.period_start = v_period AND s.slice = 0 AND s.next_alert_usd IS NOT NULL;
    END LOOP;
    RETURN p_slices;
END;
$$;
COMMENT ON FUNCTION sigledger.set_budget_slices(bigint, integer) IS
'Splits the budget''s spend over slices (1..64; default 1) and returns the count: a reservation then locks
one slice''s row, not the budget''s, and headroom is moved between slices so that a caller is refused only when
the whole budget has no room. For hot budgets (docs/budgets.md, Slices). Changeable online; the current
period is re-split at once (needs READ COMMITTED, the default; otherwise 25000). expected_version of
check_and_record_budget cannot be used on a sliced budget.
SQLSTATE: 22023, 25000, P0002, 55P03';
