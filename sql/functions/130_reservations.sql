-- 130: reserve, settle, release, expire.
-- Lock order everywhere: the reservation row, then the ledger key, then budget_spend rows in (level, id,
-- period) order. The hot spend rows are taken last so that they stay locked only until commit.

-- reserve_budget: holds p_estimate_usd on every budget level of the agent before an LLM call.
CREATE OR REPLACE FUNCTION sigledger.reserve_budget(
    p_agent_id uuid,
    p_estimate_usd numeric,
    p_ttl interval DEFAULT interval '10 minutes',
    p_idempotency_key text DEFAULT NULL)
RETURNS TABLE (reservation_id bigint, remaining_usd numeric, expires_at timestamptz, fail_policy text, replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
-- a blocking row lock bounded by lock_timeout (55P03 after 5s), not NOWAIT: on a hot agent NOWAIT turns
-- most attempts into failures; waiting in the lock queue serves them in order
SET lock_timeout = '5s'
AS $$
DECLARE
    v_key text;
    v_estimate numeric;
    v_ids bigint[];
    v_periods timestamptz[];
    v_caps numeric[];
    v_levels text[];
    v_policy text;
    v_id bigint;
    v_rem numeric;
    v_min numeric;
    v_avail numeric;
    r budget_reservation%ROWTYPE;
BEGIN
    IF p_agent_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'agent_id must not be NULL';
    END IF;
    v_estimate := round(_assert_usd('estimate_usd', p_estimate_usd), 10);
    -- a zero hold always fits and settle charges the actual in full: N such reservations would overspend a
    -- hard budget without limit. The estimate is the worst case of the call (docs/budgets.md, Overruns).
    IF v_estimate <= 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('estimate_usd must be greater than 0, got %s', p_estimate_usd),
            HINT = 'Reserve the worst case of the call, e.g. max_tokens priced through the price table.';
    END IF;
    IF p_ttl IS NULL OR p_ttl <= interval '0' OR p_ttl > interval '7 days' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('ttl must be greater than 0 and at most 7 days, got %s', coalesce(p_ttl::text, 'NULL'));
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        v_key := _text_arg(p_idempotency_key, 'idempotency_key', 200, 800, 'key');
    ELSE
        v_key := 'auto:' || gen_random_uuid()::text;
    END IF;

    SELECT ch.ids, ch.periods, ch.caps, ch.levels, ch.agent_fail_policy
      INTO v_ids, v_periods, v_caps, v_levels, v_policy
      FROM _budget_chain_arrays(p_agent_id, now()) ch;
    IF v_ids IS NULL THEN
        PERFORM 1 FROM agent_registry a WHERE a.id = p_agent_id;
        RAISE EXCEPTION USING ERRCODE = 'P0002',
            MESSAGE = CASE WHEN FOUND THEN format('agent %s has no budget', p_agent_id)
                           ELSE format('unknown agent %s', p_agent_id) END,
            HINT = 'Create one with set_budget(agent_id, limit_usd).';
    END IF;

    -- the reservation row first: a concurrent call with the same key waits here for ours and then finds it
    INSERT INTO budget_reservation (idempotency_key, agent_id, estimate_usd, budget_ids, period_starts, expires_at)
    VALUES (v_key, p_agent_id, v_estimate, v_ids, v_periods, now() + p_ttl)
    ON CONFLICT ON CONSTRAINT budget_reservation_idempotency_key_key DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT * INTO r FROM budget_reservation br WHERE br.idempotency_key = v_key;
        IF r.agent_id <> p_agent_id OR r.estimate_usd <> v_estimate THEN
            RAISE EXCEPTION USING ERRCODE = '23505',
                MESSAGE = format('idempotency key %s already used by reservation %s (agent %s, estimate %s)',
                                 _text_quote(v_key), r.id, r.agent_id, r.estimate_usd);
        END IF;
        SELECT min(greatest(0, s.cap_usd - s.spent_usd - s.reserved_usd)) INTO v_min
          FROM unnest(r.budget_ids, r.period_starts) u(budget_id, period_start)
          JOIN budget_spend s ON s.budget_id = u.budget_id AND s.period_start = u.period_start;
        reservation_id := r.id; remaining_usd := v_min; expires_at := r.expires_at; fail_policy := v_policy;
        replayed := true;
        RETURN NEXT;
        RETURN;
    END IF;

    -- one guarded statement per level, in lock order; a refusal rolls back the levels already held
    FOR i IN 1 .. cardinality(v_ids) LOOP
        v_rem := _spend_hold(v_ids[i], v_periods[i], v_caps[i], v_estimate, false);
        IF v_rem IS NULL THEN
            SELECT greatest(0, s.cap_usd - s.spent_usd - s.reserved_usd) INTO v_avail
              FROM budget_spend s WHERE s.budget_id = v_ids[i] AND s.period_start = v_periods[i];
            RAISE EXCEPTION USING ERRCODE = 'SLB01',
                MESSAGE = format('budget exceeded: agent %s asks %s USD, %s budget %s has %s USD left',
                                 p_agent_id, p_estimate_usd, v_levels[i], v_ids[i], v_avail),
                DETAIL = format('remaining_usd=%s budget_id=%s level=%s period_start=%s',
                                v_avail, v_ids[i], v_levels[i], v_periods[i]),
                HINT = 'Lower the estimate, wait for open reservations to settle, or raise the limit.';
        END IF;
        v_min := least(v_min, v_rem);
    END LOOP;
    -- OUT values and RETURN NEXT (no query: a RETURN QUERY is one more statement to execute)
    reservation_id := v_id; remaining_usd := v_min; expires_at := now() + p_ttl; fail_policy := v_policy;
    replayed := false;
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION sigledger.reserve_budget(uuid, numeric, interval, text) IS
'Holds estimate_usd on the agent''s budget (and its team/org budgets) for ttl (default 10 min, max 7 days) and
returns (reservation_id, remaining_usd, expires_at, fail_policy, replayed). estimate_usd must be greater than 0
(22023): reserve the worst case of the call. Idempotent by idempotency_key (a
key reused for another agent or estimate: 23505). Refused with SLB01 when the hold does not fit under
limit x (1 + grace) at some level; DETAIL: remaining_usd=... budget_id=... level=... period_start=....
Waits for a busy budget row at most lock_timeout (5s, then 55P03).
SQLSTATE: 22004, 22023, 22003, 23505, P0002, SLB01, 55P03';

-- settle_budget: writes the ledger row for a reservation and turns its hold into spend, in one transaction.
CREATE OR REPLACE FUNCTION sigledger.settle_budget(
    p_reservation_id bigint,
    p_actual_usd numeric DEFAULT NULL,
    p_input_tokens bigint DEFAULT 0,
    p_output_tokens bigint DEFAULT 0,
    p_model text DEFAULT 'unspecified',
    p_provider text DEFAULT 'unspecified',
    p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS TABLE (ledger_id bigint, reservation_id bigint, estimate_usd numeric, actual_usd numeric,
               overrun_usd numeric, replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    r budget_reservation%ROWTYPE;
    v record;
    v_ins record;
    c record;
    v_key text;
    v_overrun numeric;
BEGIN
    IF p_reservation_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'reservation_id must not be NULL';
    END IF;
    -- serialises with a concurrent settle, release or expiry of the same reservation
    SELECT * INTO r FROM budget_reservation br WHERE br.id = p_reservation_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown reservation %s', p_reservation_id);
    END IF;
    IF r.state = 'settled' THEN
        -- idempotent replay; a different actual is a conflict, not a silent second answer
        IF p_actual_usd IS NOT NULL AND p_actual_usd IS DISTINCT FROM r.actual_usd THEN
            RAISE EXCEPTION USING ERRCODE = 'SLB03',
                MESSAGE = format('reservation %s is already settled at %s USD, not %s', r.id, r.actual_usd, p_actual_usd);
        END IF;
        ledger_id := r.ledger_id; reservation_id := r.id; estimate_usd := r.estimate_usd; actual_usd := r.actual_usd;
        overrun_usd := r.overrun_usd; replayed := true;
        RETURN NEXT;
        RETURN;
    ELSIF r.state = 'released' THEN
        RAISE EXCEPTION USING ERRCODE = 'SLB03',
            MESSAGE = format('reservation %s was released at %s and cannot be settled', r.id, r.closed_at);
    ELSIF r.state = 'expired' THEN
        RAISE EXCEPTION USING ERRCODE = 'SLB02',
            MESSAGE = format('reservation %s expired; its hold was released', r.id),
            DETAIL = format('expired_at=%s ledger_idempotency_key=reservation:%s', r.closed_at, r.id),
            HINT = 'Record the actual cost with record_cost(p_idempotency_key => ''reservation:<id>'', ...).';
    END IF;

    v_key := 'reservation:' || r.id::text;
    v := _cost_validate(v_key, r.agent_id, p_model, p_provider, p_input_tokens, p_output_tokens,
                        p_actual_usd, NULL, p_metadata, false);
    v_overrun := greatest(0, v.cost_usd - r.estimate_usd);
    v_ins := _cost_insert(v_key, r.agent_id, v.model, v.provider, p_input_tokens, p_output_tokens,
                          v.cost_usd, v.priced_usd, v.cost_source, r.id, r.created_at, v.created_at,
                          CASE WHEN v_overrun > 0 THEN v.metadata || jsonb_build_object('overrun_usd', v_overrun)
                               ELSE v.metadata END);
    IF NOT v_ins.inserted THEN
        -- the cost was already recorded under this key (record_cost after an outage or an expiry) and charged
        -- then: settling only releases the hold, and reports the recorded figure
        SELECT l.cost_usd INTO v.cost_usd FROM llm_cost_log l WHERE l.id = v_ins.ledger_id;
        v_overrun := greatest(0, v.cost_usd - r.estimate_usd);
    END IF;
    UPDATE budget_reservation br
       SET state = 'settled', closed_at = now(), actual_usd = v.cost_usd, overrun_usd = v_overrun,
           ledger_id = v_ins.ledger_id
     WHERE br.id = r.id;
    -- the spend rows last (hot rows locked only until commit), in the order stored at reserve time
    FOR c IN
        SELECT u.budget_id, u.period_start, b.limit_usd, b.limit_usd * (1 + b.grace_ratio) AS cap_usd, b.alert_thresholds
          FROM unnest(r.budget_ids, r.period_starts) WITH ORDINALITY AS u(budget_id, period_start, ord)
          JOIN budget b ON b.id = u.budget_id
         ORDER BY u.ord
    LOOP
        PERFORM _spend_charge(c.budget_id, c.period_start, c.cap_usd,
                              CASE WHEN v_ins.inserted THEN v.cost_usd ELSE 0 END, r.estimate_usd,
                              c.limit_usd, c.alert_thresholds);
    END LOOP;
    ledger_id := v_ins.ledger_id; reservation_id := r.id; estimate_usd := r.estimate_usd;
    actual_usd := v.cost_usd::numeric(20,10); overrun_usd := v_overrun::numeric(20,10); replayed := false;
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION sigledger.settle_budget(bigint, numeric, bigint, bigint, text, text, jsonb) IS
'Settles a reservation with the actual cost (NULL: priced from tokens and model): writes the ledger row
(idempotency key reservation:<id>) and releases the hold in one transaction; returns (ledger_id,
reservation_id, estimate_usd, actual_usd, overrun_usd, replayed). Idempotent: settling again returns the same
row (a different actual: SLB03). An actual above the estimate is charged in full, reported as overrun_usd and
listed in view budget_overruns. Expired reservation: SLB02 (record the cost with record_cost); released: SLB03.
SQLSTATE: 22004, 22023, 22003, P0002, SLB02, SLB03, 55P03';

-- release_budget: voids an open reservation (the call did not happen). Idempotent.
CREATE OR REPLACE FUNCTION sigledger.release_budget(p_reservation_id bigint)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    r budget_reservation%ROWTYPE;
BEGIN
    IF p_reservation_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'reservation_id must not be NULL';
    END IF;
    SELECT * INTO r FROM budget_reservation br WHERE br.id = p_reservation_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown reservation %s', p_reservation_id);
    END IF;
    IF r.state = 'settled' THEN
        RAISE EXCEPTION USING ERRCODE = 'SLB03',
            MESSAGE = format('reservation %s is already settled (ledger %s) and cannot be released', r.id, r.ledger_id);
    ELSIF r.state IN ('released', 'expired') THEN
        RETURN r.state;  -- the hold is already gone
    END IF;
    UPDATE budget_reservation br SET state = 'released', closed_at = now() WHERE br.id = r.id;
    -- the spend rows last (hot rows locked only until commit)
    FOR i IN 1 .. cardinality(r.budget_ids) LOOP
        PERFORM _spend_release(r.budget_ids[i], r.period_starts[i], r.estimate_usd);
    END LOOP;
    RETURN 'released';
END;
$$;
COMMENT ON FUNCTION sigledger.release_budget(bigint) IS
'Releases the hold of an open reservation and returns its final state (released; expired if the sweep got it
first). Idempotent. A settled reservation: SLB03.
SQLSTATE: 22004, P0002, SLB03, 55P03';

-- expire_reservations: releases holds whose TTL has passed. Claims with SKIP LOCKED: a reservation being
-- settled or released right now is left to that call (and to the next sweep if that call fails).
CREATE OR REPLACE FUNCTION sigledger.expire_reservations(p_limit integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    x record;
    v_count integer := 0;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 1000000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('limit must be between 1 and 1000000, got %s', coalesce(p_limit::text, 'NULL'));
    END IF;
    FOR x IN
        WITH claimed AS (
            SELECT br.id FROM budget_reservation br
             WHERE br.state = 'open' AND br.expires_at <= now()
             ORDER BY br.expires_at, br.id
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED
        ), expired AS (
            UPDATE budget_reservation br SET state = 'expired', closed_at = now()
              FROM claimed WHERE br.id = claimed.id
            RETURNING br.budget_ids, br.period_starts, br.estimate_usd
        ), holds AS (
            SELECT u.budget_id, u.period_start, sum(e.estimate_usd) AS amount
              FROM expired e CROSS JOIN LATERAL unnest(e.budget_ids, e.period_starts) AS u(budget_id, period_start)
             GROUP BY u.budget_id, u.period_start
        )
        SELECT h.budget_id, h.period_start, h.amount, (SELECT count(*) FROM expired) AS n
          FROM holds h JOIN budget b ON b.id = h.budget_id
         -- the global lock order
         ORDER BY CASE b.level WHEN 'org' THEN 0 WHEN 'team' THEN 1 ELSE 2 END, h.budget_id, h.period_start
    LOOP
        PERFORM _spend_release(x.budget_id, x.period_start, x.amount);
        v_count := x.n;
    END LOOP;
    RETURN v_count;
END;
$$;
COMMENT ON FUNCTION sigledger.expire_reservations(integer) IS
'Releases the holds of open reservations past their TTL (at most limit of them) and returns how many expired.
Reservations locked by a concurrent settle/release are skipped.
SQLSTATE: 22023, 55P03';
