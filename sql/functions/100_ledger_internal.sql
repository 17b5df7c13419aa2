-- 100: internal helpers of the ledger and budgets (leading underscore: never granted to the app role).
-- They are called only from the SECURITY DEFINER API functions; they qualify every name and pin search_path
-- like every function of the schema.

-- _assert_usd: raise unless p_value is a finite amount in [0, p_max] with at most 10 decimal places.
-- NULL -> 22004; NaN, +/-Infinity, negative -> 22023; above p_max (1e309 included) or finer than 1e-10 -> 22003.
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
    -- money is exact to 1e-10 USD everywhere it is stored: a finer amount is refused, never rounded
    IF p_value <> round(p_value, 10) THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('%s must have at most 10 decimal places (1e-10 USD), got %s', p_name,
                             CASE WHEN length(p_value::text) > 60 THEN left(p_value::text, 40) || '...' || ' (' || length(p_value::text) || ' characters)' ELSE p_value::text END),
            HINT = 'Amounts are stored exactly; round the value to 10 decimal places yourself if that is what you mean.';
    END IF;
    RETURN p_value;
END;
$$;

-- _assert_exact: raise unless p_value has at most p_scale decimal places (the scale of the column that stores
-- it): an amount is stored as given or refused, never rounded. 22003 names the value.
CREATE OR REPLACE FUNCTION sigledger._assert_exact(p_name text, p_value numeric, p_scale integer)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_value <> round(p_value, p_scale) THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('%s must have at most %s decimal places, got %s', p_name, p_scale,
                             CASE WHEN length(p_value::text) > 60 THEN left(p_value::text, 40) || '...' || ' (' || length(p_value::text) || ' characters)' ELSE p_value::text END);
    END IF;
    RETURN p_value;
END;
$$;

-- _assert_text: the text rules (_text_arg, 005) for a name of the ledger: model, provider, agent and budget
-- names: trimmed of whitespace and format characters, NFC, not blank, at most 200 characters and 800 bytes.
-- Returns the canonical value (NULL -> 22004).
CREATE OR REPLACE FUNCTION sigledger._assert_text(p_name text, p_value text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    RETURN sigledger._text_arg(p_value, p_name, 200, 800);
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

-- _price: cost of a call from the dated price table, NULL when the model has no price at p_at; rounded to
-- 10 decimal places (the ledger's precision: a computed figure is rounded, a given one never is).
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
    RETURN round((p_input_tokens * v_in + p_output_tokens * v_out) / 1000000, 10);
END;
$$;

-- (the nine-argument version of earlier builds, replaced by the one below with p_check_agent; and the one
-- without OUT model and provider)
DROP FUNCTION IF EXISTS sigledger._cost_validate(text, uuid, text, text, bigint, bigint, numeric, timestamptz, jsonb);
DO $drop$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = '_cost_validate' AND pronamespace = 'sigledger'::regnamespace
                                           AND 'model' = ANY (proargnames)) THEN
        DROP FUNCTION IF EXISTS sigledger._cost_validate(text, uuid, text, text, bigint, bigint, numeric, timestamptz,
                                                         jsonb, boolean);
    END IF;
END
$drop$;

-- _cost_validate: validates one cost record and resolves its cost (client figure, or price table when
-- omitted). Raises 22004/22023/22003 for bad values, P0002 for an unknown agent. Writes nothing, so
-- record_costs can run it inside a cheap subtransaction that never gets an XID. model and provider come back
-- in canonical form (text rules, 005): that is what the ledger stores; the idempotency key is opaque (exactly
-- as given, only refused when blank, with a control character, or over 200 characters / 800 bytes).
-- created_at may be at most c_backdate_window (7 days: the harness's spool-replay window) in the past: a cost
-- is charged to the budget period of its created_at, so an older one would land in a closed period and escape
-- the current one (docs/budgets.md). record_costs quarantines such rows with this message.
CREATE OR REPLACE FUNCTION sigledger._cost_validate(
    p_idempotency_key text, p_agent_id uuid, p_model text, p_provider text,
    p_input_tokens bigint, p_output_tokens bigint, p_cost_usd numeric, p_created_at timestamptz, p_metadata jsonb,
    p_check_agent boolean DEFAULT true,
    OUT cost_usd numeric, OUT priced_usd numeric, OUT cost_source text, OUT created_at timestamptz,
    OUT metadata jsonb, OUT model text, OUT provider text)
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    c_backdate_window CONSTANT interval := interval '7 days';
    v_checked text;
    v_tokens bigint;
BEGIN
    -- assignments, not PERFORM: a PERFORM runs one more SQL statement, an assignment a plain function call
    v_checked := sigledger._text_arg(p_idempotency_key, 'idempotency_key', 200, 800, 'key');
    model := sigledger._text_arg(p_model, 'model', 200, 800);
    provider := sigledger._text_arg(p_provider, 'provider', 200, 800);
    v_tokens := sigledger._assert_tokens('input_tokens', p_input_tokens);
    v_tokens := sigledger._assert_tokens('output_tokens', p_output_tokens);
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
    priced_usd := sigledger._price(provider, model, created_at, p_input_tokens, p_output_tokens);
    IF priced_usd > 100000000 THEN
        -- tokens x price beyond what the ledger holds (llm_cost_log_priced_usd_range): refused by name, never a
        -- failed INSERT that sinks a whole batch
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('priced cost of %s input + %s output tokens of %s/%s is %s USD, above 100000000',
                             p_input_tokens, p_output_tokens, provider, model, priced_usd);
    END IF;
    IF p_cost_usd IS NULL THEN
        IF priced_usd IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('cost_usd omitted and no price for provider %s model %s at %s',
                                 sigledger._text_quote(provider), sigledger._text_quote(model), created_at),
                HINT = 'Pass cost_usd, or add the model to the price table with add_model_price().';
        END IF;
        cost_usd := sigledger._assert_usd('priced cost_usd', priced_usd);
        cost_source := 'price_table';
    ELSE
        cost_usd := sigledger._assert_usd('cost_usd', p_cost_usd);
        cost_source := 'client';
    END IF;
END;
$$;

-- _budget_chain: the budgets an agent's spending counts against, in lock order (org, team, agent), with the
-- period row each one charges at p_at. An agent budget without a limit of its own (limit_usd NULL, under a
-- team or org budget) is not a level: its spending counts only against its parents. PL/pgSQL with
-- primary-key lookups: its plans are cached, where a SQL function is planned again on every call.
DROP FUNCTION IF EXISTS sigledger._budget_chain(uuid, timestamptz);
CREATE FUNCTION sigledger._budget_chain(p_agent_id uuid, p_at timestamptz)
RETURNS TABLE (budget_id bigint, level text, lock_rank integer, period_start timestamptz, cap_usd numeric,
               limit_usd numeric, alert_thresholds numeric[], fail_policy text, slices integer)
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_chain sigledger.budget[] := '{}'::sigledger.budget[];
    b sigledger.budget;
BEGIN
    SELECT * INTO b FROM sigledger.budget x WHERE x.agent_id = p_agent_id;
    WHILE FOUND LOOP
        IF b.limit_usd IS NOT NULL THEN
            v_chain := b || v_chain;  -- parents first
        END IF;
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
        slices := b.slices;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- _budget_chain_arrays: the same chain as parallel arrays in lock order (what the API functions loop over),
-- plus the agent's fail policy (of its own budget row, limit or not; else of the nearest level).
DROP FUNCTION IF EXISTS sigledger._budget_chain_arrays(uuid, timestamptz);
CREATE FUNCTION sigledger._budget_chain_arrays(
    p_agent_id uuid, p_at timestamptz,
    OUT ids bigint[], OUT periods timestamptz[], OUT caps numeric[], OUT limits numeric[], OUT thresholds text[],
    OUT levels text[], OUT agent_fail_policy text, OUT slices integer[])
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
        IF b.limit_usd IS NOT NULL THEN
            ids := b.id || ids;
            periods := sigledger._period_start(b.period, p_at) || periods;
            caps := (b.limit_usd * (1 + b.grace_ratio)) || caps;
            limits := b.limit_usd || limits;
            thresholds := b.alert_thresholds::text || thresholds;
            levels := b.level || levels;
            slices := b.slices::integer || slices;
        END IF;
        EXIT WHEN b.parent_id IS NULL OR cardinality(ids) >= 3;
        SELECT * INTO b FROM sigledger.budget x WHERE x.id = b.parent_id;
    END LOOP;
END;
$$;

-- _quarantine_replay_key: what identifies a refused row in cost_quarantine (replay_key, V8_103): the SHA-256
-- of its payload (the batch row as sent, which holds its key; jsonb text is canonical) when it has an
-- idempotency key; NULL without one (a row without a key has no identity: each flush of it is quarantined).
-- The writers insert with ON CONFLICT (replay_key) DO NOTHING, so a batch sent again quarantines nothing twice.
CREATE OR REPLACE FUNCTION sigledger._quarantine_replay_key(p_key text, p_payload jsonb)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = sigledger, pg_temp
RETURN CASE WHEN p_key IS NOT NULL THEN encode(sha256(convert_to(p_payload::text, 'UTF8')), 'hex') END;
