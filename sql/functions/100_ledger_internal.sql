-- 100: internal helpers of the ledger and budgets (leading underscore: never granted to the app role).
-- They are called only from the SECURITY DEFINER API functions; they qualify every name and pin search_path
-- like every function of the schema.

-- _assert_usd: raise unless p_value is a finite amount in [0, p_max].
-- NULL -> 22004; NaN, +/-Infinity, negative -> 22023; above p_max (1e309 included) -> 22003.
CREATE OR REPLACE FUNCTION sigledger._assert_usd(p_name text, p_value numeric, p_max numeric DEFAULT 1000000)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = format('%s must not be NULL', p_name);
    END IF;
    -- 'NaN'::numeric >= 0 is true, so NaN and the infinities are named first
    IF p_value = 'NaN' OR p_value = 'Infinity' OR p_value = '-Infinity' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s must be a finite number, got %s', p_name, p_value);
    END IF;
    IF p_value < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s must not be negative, got %s', p_name, p_value);
    END IF;
    IF p_value > p_max THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('%s must be at most %s, got %s', p_name, p_max,
                             CASE WHEN length(p_value::text) > 40 THEN left(p_value::text, 20) || '...' || ' (' || length(p_value::text) || ' digits)' ELSE p_value::text END);
    END IF;
    RETURN p_value;
END;
$$;

-- _assert_text: raise unless p_value is a non-blank string of at most 200 characters (NULL -> 22004).
CREATE OR REPLACE FUNCTION sigledger._assert_text(p_name text, p_value text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = format('%s must not be NULL', p_name);
    END IF;
    IF length(btrim(p_value)) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s must not be empty, got %L', p_name, p_value);
    END IF;
    IF length(p_value) > 200 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s must be at most 200 characters, got %s', p_name, length(p_value));
    END IF;
    RETURN p_value;
END;
$$;

-- _assert_tokens: raise unless p_value is a token count in [0, 1e12] (NULL -> 22004).
CREATE OR REPLACE FUNCTION sigledger._assert_tokens(p_name text, p_value bigint)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = format('%s must not be NULL', p_name);
    END IF;
    IF p_value < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s must not be negative, got %s', p_name, p_value);
    END IF;
    IF p_value > 1000000000000 THEN
        RAISE EXCEPTION USING ERRCODE = '22003', MESSAGE = format('%s must be at most 1e12, got %s', p_name, p_value);
    END IF;
    RETURN p_value;
END;
$$;

-- _assert_timestamp: raise unless p_value lies after 2020-01-01 and at most 1 day ahead (NULL -> now()).
CREATE OR REPLACE FUNCTION sigledger._assert_timestamp(p_name text, p_value timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_value IS NULL THEN
        RETURN now();
    END IF;
    IF p_value <= timestamptz '2020-01-01 00:00:00+00' OR p_value > now() + interval '1 day' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s must lie after 2020-01-01 and at most 1 day ahead, got %s', p_name, p_value);
    END IF;
    RETURN p_value;
END;
$$;

-- _price: cost of a call from the dated price table, NULL when the model has no price at p_at.
-- (PL/pgSQL: its plan is cached; a SQL function with a SET clause is planned on every call.)
CREATE OR REPLACE FUNCTION sigledger._price(p_provider text, p_model text, p_at timestamptz,
                                            p_input_tokens bigint, p_output_tokens bigint)
RETURNS numeric
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_in numeric;
    v_out numeric;
BEGIN
    SELECT p.input_usd_per_mtok, p.output_usd_per_mtok INTO v_in, v_out
      FROM sigledger.model_price p
     WHERE p.provider = p_provider AND p.model = p_model AND p.valid_from <= p_at
     ORDER BY p.valid_from DESC
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN round((p_input_tokens * v_in + p_output_tokens * v_out) / 1000000, 6);
END;
$$;

-- (the nine-argument version of earlier builds, replaced by the one below with p_check_agent)
DROP FUNCTION IF EXISTS sigledger._cost_validate(text, uuid, text, text, bigint, bigint, numeric, timestamptz, jsonb);

-- _cost_validate: validates one cost record and resolves its cost (client figure, or price table when
-- omitted). Raises 22004/22023/22003 for bad values, P0002 for an unknown agent. Writes nothing, so
-- record_costs can run it inside a cheap subtransaction that never gets an XID.
-- created_at may be at most c_backdate_window (7 days: the harness's spool-replay window) in the past: a cost
-- is charged to the budget period of its created_at, so an older one would land in a closed period and escape
-- the current one (docs/budgets.md). record_costs quarantines such rows with this message.
CREATE OR REPLACE FUNCTION sigledger._cost_validate(
    p_idempotency_key text, p_agent_id uuid, p_model text, p_provider text,
    p_input_tokens bigint, p_output_tokens bigint, p_cost_usd numeric, p_created_at timestamptz, p_metadata jsonb,
    p_check_agent boolean DEFAULT true,
    OUT cost_usd numeric, OUT priced_usd numeric, OUT cost_source text, OUT created_at timestamptz,
    OUT metadata jsonb)
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    c_backdate_window CONSTANT interval := interval '7 days';
BEGIN
    PERFORM sigledger._assert_text('idempotency_key', p_idempotency_key);
    PERFORM sigledger._assert_text('model', p_model);
    PERFORM sigledger._assert_text('provider', p_provider);
    PERFORM sigledger._assert_tokens('input_tokens', p_input_tokens);
    PERFORM sigledger._assert_tokens('output_tokens', p_output_tokens);
    created_at := sigledger._assert_timestamp('created_at', p_created_at);
    IF created_at < now() - c_backdate_window THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('created_at must be at most %s old (the spool-replay window), got %s',
                             c_backdate_window, p_created_at),
            HINT = 'A cost is charged to the budget period of created_at; record it with the current time.';
    END IF;
    metadata := coalesce(p_metadata, '{}'::jsonb);
    IF jsonb_typeof(metadata) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('metadata must be a JSON object, got %s', jsonb_typeof(metadata));
    END IF;
    IF p_agent_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'agent_id must not be NULL';
    END IF;
    IF p_check_agent THEN
        PERFORM 1 FROM sigledger.agent_registry a WHERE a.id = p_agent_id;
    END IF;
    IF p_check_agent AND NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown agent %s', p_agent_id);
    END IF;
    priced_usd := sigledger._price(p_provider, p_model, created_at, p_input_tokens, p_output_tokens);
    IF p_cost_usd IS NULL THEN
        IF priced_usd IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('cost_usd omitted and no price for provider %L model %L at %s', p_provider, p_model, created_at),
                HINT = 'Pass cost_usd, or add the model to the price table with add_model_price().';
        END IF;
        cost_usd := sigledger._assert_usd('priced cost_usd', priced_usd);
        cost_source := 'price_table';
    ELSE
        cost_usd := round(sigledger._assert_usd('cost_usd', p_cost_usd), 6);
        cost_source := 'client';
    END IF;
END;
$$;

-- _budget_chain: the budgets an agent's spending counts against, in lock order (org, team, agent),
-- with the period row each one charges at p_at. PL/pgSQL with three primary-key lookups: its plans are
-- cached, where a SQL function is planned again on every call (it is on the hot path of every API call).
CREATE OR REPLACE FUNCTION sigledger._budget_chain(p_agent_id uuid, p_at timestamptz)
RETURNS TABLE (budget_id bigint, level text, lock_rank integer, period_start timestamptz, cap_usd numeric,
               limit_usd numeric, alert_thresholds numeric[], fail_policy text)
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_chain sigledger.budget[] := '{}'::sigledger.budget[];
    b sigledger.budget;
BEGIN
    SELECT * INTO b FROM sigledger.budget x WHERE x.agent_id = p_agent_id;
    WHILE FOUND LOOP
        v_chain := b || v_chain;  -- parents first
        EXIT WHEN b.parent_id IS NULL OR cardinality(v_chain) >= 3;
        SELECT * INTO b FROM sigledger.budget x WHERE x.id = b.parent_id;
    END LOOP;
    FOREACH b IN ARRAY v_chain LOOP
        budget_id := b.id;
        level := b.level;
        lock_rank := CASE b.level WHEN 'org' THEN 0 WHEN 'team' THEN 1 ELSE 2 END;
        period_start := sigledger._period_start(b.period, p_at);
        cap_usd := b.limit_usd * (1 + b.grace_ratio);
        limit_usd := b.limit_usd;
        alert_thresholds := b.alert_thresholds;
        fail_policy := b.fail_policy;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- _budget_chain_arrays: the same chain as parallel arrays in lock order (what the API functions loop over),
-- plus the agent level's fail policy.
CREATE OR REPLACE FUNCTION sigledger._budget_chain_arrays(
    p_agent_id uuid, p_at timestamptz,
    OUT ids bigint[], OUT periods timestamptz[], OUT caps numeric[], OUT limits numeric[], OUT thresholds text[],
    OUT levels text[], OUT agent_fail_policy text)
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
-- (walks the chain itself rather than reading _budget_chain: one statement per level, no set-returning call)
DECLARE
    b sigledger.budget;
BEGIN
    SELECT * INTO b FROM sigledger.budget x WHERE x.agent_id = p_agent_id;
    IF FOUND THEN
        agent_fail_policy := b.fail_policy;
    END IF;
    WHILE FOUND LOOP
        -- parents are prepended: the arrays end up in lock order (org, team, agent)
        ids := b.id || ids;
        periods := sigledger._period_start(b.period, p_at) || periods;
        caps := (b.limit_usd * (1 + b.grace_ratio)) || caps;
        limits := b.limit_usd || limits;
        thresholds := b.alert_thresholds::text || thresholds;
        levels := b.level || levels;
        EXIT WHEN b.parent_id IS NULL OR cardinality(ids) >= 3;
        SELECT * INTO b FROM sigledger.budget x WHERE x.id = b.parent_id;
    END LOOP;
END;
$$;

-- _spend_ensure: creates the period row of a budget if it is missing (concurrent creators are harmless).
-- Returns false when the row already existed. When a concurrent transaction has inserted it and not yet
-- committed, the INSERT waits for that transaction; afterwards the row exists (ours or the committed one), so
-- the caller must redo its UPDATE rather than read false as "refused".
CREATE OR REPLACE FUNCTION sigledger._spend_ensure(p_budget_id bigint, p_period_start timestamptz, p_cap numeric)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    INSERT INTO sigledger.budget_spend (budget_id, period_start, cap_usd)
    VALUES (p_budget_id, p_period_start, p_cap)
    ON CONFLICT (budget_id, period_start) DO NOTHING;
    RETURN FOUND;
END;
$$;

-- _spend_hold: the guarded statement of a reservation at one level: adds p_amount to the holds only if
-- spent + reserved + p_amount <= cap. Returns the remaining amount after the hold, NULL when it does not fit.
-- The UPDATE waits for the row lock (bounded by the caller's lock_timeout) and, under READ COMMITTED,
-- re-evaluates its guard on the row version left by the previous holder: no check-then-act window.
-- NULL means only that the guarded UPDATE refused on an existing row: a period row that is missing (first use)
-- or inserted by a concurrent, still uncommitted transaction is ensured first and the UPDATE redone.
CREATE OR REPLACE FUNCTION sigledger._spend_hold(p_budget_id bigint, p_period_start timestamptz, p_cap numeric,
                                                 p_amount numeric, p_nowait boolean DEFAULT false)
RETURNS numeric
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_remaining numeric;
BEGIN
    FOR i IN 1..2 LOOP
        IF p_nowait THEN
            -- the seed's fail-fast mode, only on request: 55P03 when another session holds the row
            PERFORM 1 FROM sigledger.budget_spend s
             WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start FOR UPDATE NOWAIT;
        END IF;
        UPDATE sigledger.budget_spend s
           SET reserved_usd = s.reserved_usd + p_amount
         WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start
           AND s.spent_usd + s.reserved_usd + p_amount <= s.cap_usd
        RETURNING s.cap_usd - s.spent_usd - s.reserved_usd INTO v_remaining;
        IF FOUND THEN
            RETURN v_remaining;
        END IF;
        -- the second UPDATE ran on a row that exists: the guard refused
        EXIT WHEN i = 2;
        -- nothing updated: the period row is missing (first use this period), not yet committed by a concurrent
        -- first user (the INSERT waits for it), or the guard refused. Either way the row exists afterwards and
        -- the UPDATE is redone: its answer, not the INSERT's, decides.
        PERFORM sigledger._spend_ensure(p_budget_id, p_period_start, p_cap);
    END LOOP;
    RETURN NULL;
END;
$$;

-- _spend_alerts: one alert row per (budget, period, threshold) crossed by a spend increase, plus a NOTIFY
-- on channel sigledger_budget_alert carrying {"alert_id": id} for each row actually inserted.
CREATE OR REPLACE FUNCTION sigledger._spend_alerts(p_budget_id bigint, p_period_start timestamptz, p_limit numeric,
                                                   p_thresholds numeric[], p_old_spent numeric, p_new_spent numeric)
RETURNS integer
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_threshold numeric;
    v_id bigint;
    v_count integer := 0;
BEGIN
    FOREACH v_threshold IN ARRAY p_thresholds LOOP
        IF p_old_spent < v_threshold * p_limit AND p_new_spent >= v_threshold * p_limit THEN
            INSERT INTO sigledger.budget_alert (budget_id, period_start, threshold, limit_usd, spent_usd)
            VALUES (p_budget_id, p_period_start, v_threshold, p_limit, p_new_spent)
            ON CONFLICT ON CONSTRAINT budget_alert_once_key DO NOTHING
            RETURNING id INTO v_id;
            IF v_id IS NOT NULL THEN
                v_count := v_count + 1;
                -- the payload is a wake-up, not the alert: any role may NOTIFY on this channel, so watchers
                -- read the alert through the API by this id (budget_alert_document) and ignore what is not there
                PERFORM pg_notify('sigledger_budget_alert', json_build_object('alert_id', v_id)::text);
            END IF;
        END IF;
    END LOOP;
    RETURN v_count;
END;
$$;

-- _spend_charge: books money already spent at one level: spent += p_spent, holds -= p_release. Not
-- guarded (the call has happened); whatever lands above the cap is added to excess_usd so that the
-- backstop CHECK stays true and the overspend is visible. Fires alerts.
CREATE OR REPLACE FUNCTION sigledger._spend_charge(p_budget_id bigint, p_period_start timestamptz, p_cap numeric,
                                                   p_spent numeric, p_release numeric, p_limit numeric,
                                                   p_thresholds numeric[])
RETURNS numeric
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_new_spent numeric;
BEGIN
    FOR i IN 1..2 LOOP
        UPDATE sigledger.budget_spend s
           SET spent_usd = s.spent_usd + p_spent,
               reserved_usd = s.reserved_usd - p_release,
               excess_usd = s.excess_usd + greatest(0, (s.spent_usd + p_spent + s.reserved_usd - p_release)
                                                       - (s.cap_usd + s.excess_usd))
         WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start
        RETURNING s.spent_usd INTO v_new_spent;
        EXIT WHEN FOUND;
        PERFORM sigledger._spend_ensure(p_budget_id, p_period_start, p_cap);
    END LOOP;
    IF v_new_spent IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = format('budget_spend row %s/%s vanished', p_budget_id, p_period_start);
    END IF;
    IF p_spent > 0 AND cardinality(p_thresholds) > 0 THEN
        PERFORM sigledger._spend_alerts(p_budget_id, p_period_start, p_limit, p_thresholds,
                                        v_new_spent - p_spent, v_new_spent);
    END IF;
    RETURN v_new_spent;
END;
$$;

-- _spend_release: drops holds at one level (release, expiry).
CREATE OR REPLACE FUNCTION sigledger._spend_release(p_budget_id bigint, p_period_start timestamptz, p_amount numeric)
RETURNS void
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    UPDATE sigledger.budget_spend s
       SET reserved_usd = s.reserved_usd - p_amount
     WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = format('budget_spend row %s/%s missing while releasing %s', p_budget_id, p_period_start, p_amount);
    END IF;
END;
$$;
