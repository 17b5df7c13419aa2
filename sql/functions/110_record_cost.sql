-- 110: recording costs in the ledger: record_cost (one), record_costs (a batch from the harness flush),
-- add_model_price (the dated price table).

-- _cost_insert: inserts one validated ledger row unless its idempotency key exists. Returns the ledger id
-- and whether this call inserted it. The ledger is partitioned by created_at (V4_004), so the key's global
-- uniqueness lives in the registry llm_cost_log_key: the key is claimed there first with the id the row will
-- have (a concurrent caller of the same key waits for this transaction, then sees the key: one winner), and
-- the ledger row follows with that id (its BEFORE INSERT trigger finds the claim and lets it through).
CREATE OR REPLACE FUNCTION sigledger._cost_insert(
    p_idempotency_key text, p_agent_id uuid, p_model text, p_provider text,
    p_input_tokens bigint, p_output_tokens bigint, p_cost_usd numeric, p_priced_usd numeric, p_cost_source text,
    p_reservation_id bigint, p_charged_at timestamptz, p_created_at timestamptz, p_metadata jsonb,
    OUT ledger_id bigint, OUT inserted boolean)
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    INSERT INTO sigledger.llm_cost_log_key AS k (idempotency_key, ledger_id, reservation_id, created_at)
    VALUES (p_idempotency_key, nextval('sigledger.llm_cost_log_id_seq'::regclass), p_reservation_id, p_created_at)
    ON CONFLICT ON CONSTRAINT llm_cost_log_key_pkey DO NOTHING
    RETURNING k.ledger_id INTO ledger_id;
    inserted := ledger_id IS NOT NULL;
    IF inserted THEN
        INSERT INTO sigledger.llm_cost_log (id, idempotency_key, agent_id, provider, model, tokens_input,
                                           tokens_output, cost_usd, priced_usd, cost_source, reservation_id,
                                           charged_at, created_at, metadata)
        OVERRIDING SYSTEM VALUE
        VALUES (ledger_id, p_idempotency_key, p_agent_id, p_provider, p_model, p_input_tokens, p_output_tokens,
                p_cost_usd, p_priced_usd, p_cost_source, p_reservation_id, p_charged_at, p_created_at, p_metadata);
    ELSE
        -- the key exists (possibly committed by a concurrent caller a moment ago): same answer, nothing changed
        SELECT k.ledger_id INTO ledger_id FROM sigledger.llm_cost_log_key k WHERE k.idempotency_key = p_idempotency_key;
    END IF;
END;
$$;

-- record_cost: appends one LLM call cost to the ledger and charges the agent's budgets (if any) for the
-- period of created_at. Idempotent: the same key again returns the same id and changes nothing.
CREATE OR REPLACE FUNCTION sigledger.record_cost(
    p_idempotency_key text,
    p_agent_id uuid,
    p_model text,
    p_provider text,
    p_input_tokens bigint DEFAULT 0,
    p_output_tokens bigint DEFAULT 0,
    p_cost_usd numeric DEFAULT NULL,
    p_created_at timestamptz DEFAULT NULL,
    p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
-- bounded wait for a hot budget row: a blocking lock (not NOWAIT) that gives up with 55P03 after 5s
SET lock_timeout = '5s'
AS $$
DECLARE
    v record;
    v_ins record;
    c record;
BEGIN
    v := _cost_validate(p_idempotency_key, p_agent_id, p_model, p_provider, p_input_tokens, p_output_tokens,
                        p_cost_usd, p_created_at, p_metadata);
    v_ins := _cost_insert(p_idempotency_key, p_agent_id, v.model, v.provider, p_input_tokens, p_output_tokens,
                          v.cost_usd, v.priced_usd, v.cost_source, NULL, v.created_at, v.created_at, v.metadata);
    IF v_ins.inserted THEN
        -- the cost is already spent: charge it (above the cap it becomes recorded excess)
        FOR c IN SELECT * FROM _budget_chain(p_agent_id, v.created_at) LOOP
            PERFORM _spend_charge(c.budget_id, c.period_start, c.cap_usd, v.cost_usd, 0, c.limit_usd, c.alert_thresholds);
        END LOOP;
    END IF;
    RETURN v_ins.ledger_id;
END;
$$;
COMMENT ON FUNCTION sigledger.record_cost(text, uuid, text, text, bigint, bigint, numeric, timestamptz, jsonb) IS
'Appends one LLM call cost to the append-only ledger and returns its id; the same idempotency key again returns
the same id and changes nothing. cost_usd NULL: computed from the dated price table (22023 if the model has no
price). A client cost that disagrees with the price table is charged as given; the priced figure is stored
beside it (view cost_price_disagreement). The agent''s budgets are charged for the period of created_at,
which may be at most 7 days old (the spool-replay window; older: 22023); spending above the cap is recorded
as excess, never refused (the money is already spent).
SQLSTATE: 22004, 22023, 22003, P0002, 55P03';

-- record_costs: the harness's flush. p_batch is a JSON array of objects with the record_cost fields
-- (idempotency_key, agent_id, model, provider, input_tokens, output_tokens, cost_usd, created_at, metadata).
-- Valid rows are inserted, rows whose key exists are counted as duplicates, invalid rows go to
-- cost_quarantine with their SQLSTATE and reason. Budgets are charged once per (budget, period) in lock order.
CREATE OR REPLACE FUNCTION sigledger.record_costs(p_batch jsonb)
RETURNS TABLE (inserted integer, duplicates integer, quarantined integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    v_elem jsonb;
    v record;
    v_ins record;
    c record;
    v_agent uuid;
    v_in bigint;
    v_out bigint;
    v_cost numeric;
    v_created timestamptz;
    v_state text;
    v_msg text;
    v_agents uuid[] := '{}'::uuid[];
    v_times timestamptz[] := '{}'::timestamptz[];
    v_costs numeric[] := '{}'::numeric[];
BEGIN
    inserted := 0; duplicates := 0; quarantined := 0;
    IF p_batch IS NULL OR jsonb_typeof(p_batch) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('batch must be a JSON array, got %s', coalesce(jsonb_typeof(p_batch), 'NULL'));
    END IF;
    IF jsonb_array_length(p_batch) > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('batch must hold at most 10000 rows, got %s', jsonb_array_length(p_batch));
    END IF;
    -- key order: two overlapping batches insert shared keys in the same order (no deadlock on the unique index)
    FOR v_elem IN SELECT e FROM jsonb_array_elements(p_batch) e ORDER BY e ->> 'idempotency_key' NULLS LAST LOOP
        v_state := NULL;
        -- validation writes nothing, so this subtransaction never takes an XID (no subxid overflow on big batches)
        BEGIN
            IF jsonb_typeof(v_elem) <> 'object' THEN
                RAISE EXCEPTION USING ERRCODE = '22023',
                    MESSAGE = format('batch row must be a JSON object, got %s', jsonb_typeof(v_elem));
            END IF;
            v_agent := (v_elem ->> 'agent_id')::uuid;
            v_in := coalesce((v_elem ->> 'input_tokens')::bigint, 0);
            v_out := coalesce((v_elem ->> 'output_tokens')::bigint, 0);
            v_cost := (v_elem ->> 'cost_usd')::numeric;
            v_created := (v_elem ->> 'created_at')::timestamptz;
            v := _cost_validate(v_elem ->> 'idempotency_key', v_agent, v_elem ->> 'model', v_elem ->> 'provider',
                                v_in, v_out, v_cost, v_created, v_elem -> 'metadata');
        EXCEPTION
            WHEN data_exception OR integrity_constraint_violation OR no_data_found THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
        END;
        IF v_state IS NOT NULL THEN
            INSERT INTO cost_quarantine (idempotency_key, payload, sqlstate, reason)
            VALUES (left(CASE WHEN jsonb_typeof(v_elem) = 'object' THEN v_elem ->> 'idempotency_key' END, 200),
                    v_elem, v_state, v_msg);
            quarantined := quarantined + 1;
            CONTINUE;
        END IF;
        v_ins := _cost_insert(v_elem ->> 'idempotency_key', v_agent, v.model, v.provider,
                              v_in, v_out, v.cost_usd, v.priced_usd, v.cost_source, NULL, v.created_at,
                              v.created_at, v.metadata);
        IF v_ins.inserted THEN
            inserted := inserted + 1;
            v_agents := v_agents || v_agent;
            v_times := v_times || v.created_at;
            v_costs := v_costs || v.cost_usd;
        ELSE
            duplicates := duplicates + 1;
        END IF;
    END LOOP;
    -- one charge per (budget, period), rows locked in the global order (level, budget id, period)
    FOR c IN
        SELECT ch.budget_id, ch.lock_rank, ch.period_start, ch.cap_usd, ch.limit_usd, ch.alert_thresholds,
               sum(x.cost) AS amount
          FROM unnest(v_agents, v_times, v_costs) AS x(agent_id, charged_at, cost)
          CROSS JOIN LATERAL _budget_chain(x.agent_id, x.charged_at) ch
         GROUP BY ch.budget_id, ch.lock_rank, ch.period_start, ch.cap_usd, ch.limit_usd, ch.alert_thresholds
         ORDER BY ch.lock_rank, ch.budget_id, ch.period_start
    LOOP
        PERFORM _spend_charge(c.budget_id, c.period_start, c.cap_usd, c.amount, 0, c.limit_usd, c.alert_thresholds);
    END LOOP;
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION sigledger.record_costs(jsonb) IS
'Records a batch (JSON array of record_cost objects) in one transaction: valid rows are inserted, existing
keys counted as duplicates, invalid rows (created_at more than 7 days old included) quarantined in
cost_quarantine with SQLSTATE and reason. Returns
(inserted, duplicates, quarantined). Budgets are charged once per budget and period, in lock order.
SQLSTATE: 22023, 55P03';

-- add_model_price: adds a dated price; prices are never edited, a new valid_from supersedes.
CREATE OR REPLACE FUNCTION sigledger.add_model_price(
    p_provider text, p_model text, p_input_usd_per_mtok numeric, p_output_usd_per_mtok numeric,
    p_valid_from timestamptz DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_from timestamptz := coalesce(p_valid_from, now());
BEGIN
    p_provider := _assert_text('provider', p_provider);
    p_model := _assert_text('model', p_model);
    PERFORM _assert_usd('input_usd_per_mtok', p_input_usd_per_mtok, 100000);
    PERFORM _assert_usd('output_usd_per_mtok', p_output_usd_per_mtok, 100000);
    IF v_from < timestamptz '2000-01-01 00:00:00+00' OR v_from >= timestamptz '2200-01-01 00:00:00+00' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('valid_from must lie in [2000, 2200), got %s', v_from);
    END IF;
    INSERT INTO model_price (provider, model, valid_from, input_usd_per_mtok, output_usd_per_mtok)
    VALUES (p_provider, p_model, v_from, p_input_usd_per_mtok, p_output_usd_per_mtok);
    RETURN v_from;
END;
$$;
COMMENT ON FUNCTION sigledger.add_model_price(text, text, numeric, numeric, timestamptz) IS
'Adds a price (USD per million input/output tokens) valid from valid_from (default now). A price applies to calls
made at or after valid_from until a later price.
SQLSTATE: 22004, 22023, 22003, 23505';

-- cost_trends: per-day (UTC) totals of the last p_days days, today included, zero days included.
CREATE OR REPLACE FUNCTION sigledger.cost_trends(p_days integer)
RETURNS TABLE (day date, total_usd numeric, calls bigint, input_tokens numeric, output_tokens numeric)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
-- p_days is an integer parameter used as a value, never interpolated into SQL (the seed's injection came
-- from building the interval from text).
DECLARE
    v_today date := (now() AT TIME ZONE 'UTC')::date;
BEGIN
    IF p_days IS NULL OR p_days < 1 OR p_days > 365 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('days must be between 1 and 365, got %s', coalesce(p_days::text, 'NULL'));
    END IF;
    RETURN QUERY
    SELECT d.day, coalesce(sum(l.cost_usd), 0), count(l.id),
           coalesce(sum(l.tokens_input), 0)::numeric, coalesce(sum(l.tokens_output), 0)::numeric
      FROM (SELECT v_today - g.n AS day FROM generate_series(0, p_days - 1) AS g(n)) d
      LEFT JOIN llm_cost_log l
        ON l.created_at >= (d.day::timestamp AT TIME ZONE 'UTC')
       AND l.created_at < ((d.day + 1)::timestamp AT TIME ZONE 'UTC')
     GROUP BY d.day
     ORDER BY d.day;
END;
$$;
COMMENT ON FUNCTION sigledger.cost_trends(integer) IS
'Per-day (UTC) cost totals for the last days days (1..365), today included, days without costs as zero.
SQLSTATE: 22023';
