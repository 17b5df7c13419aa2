-- 130: reserve, settle, release, expire.
-- Lock order everywhere: the ledger key (settle), the reservation row, then budget_spend rows in (level, id,
-- period, slice) order. The hot spend rows are taken last so that they stay locked only until commit.
-- Statements per call are what the budget path costs (bench/budget/README.md, Profile): validation is done
-- with assignments (a function call each, no SQL statement), the chain of a one-level agent is one read.

-- _budget_refused: raises SLB01 for a hold of p_asked at level p_failed of a chain, naming the tightest level
-- (the one with the least room; the refusing level on a tie). The levels before p_failed already carry this
-- call's hold (rolled back by the raise), so it is added back to their room.
DROP FUNCTION IF EXISTS sigledger._budget_refused(uuid, numeric, bigint[], timestamptz[], text[], integer, numeric);
CREATE OR REPLACE FUNCTION sigledger._budget_refused(
    p_agent_id uuid, p_asked numeric, p_ids bigint[], p_periods timestamptz[], p_caps numeric[], p_levels text[],
    p_failed integer, p_held numeric)
RETURNS void
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_room numeric;
    v_min numeric;
    t integer := p_failed;
BEGIN
    FOR i IN 1 .. cardinality(p_ids) LOOP
        -- (a period without rows yet has its whole cap)
        v_room := coalesce((sigledger._spend_period_room(p_ids[i], p_periods[i])).remaining_usd, p_caps[i]);
        v_room := greatest(0, v_room + CASE WHEN i < p_failed THEN p_held ELSE 0 END);
        IF v_min IS NULL OR v_room < v_min OR (v_room = v_min AND i = p_failed) THEN
            v_min := v_room;
            t := i;
        END IF;
    END LOOP;
    RAISE EXCEPTION USING ERRCODE = 'SLB01',
        MESSAGE = format('budget exceeded: agent %s asks %s USD, %s budget %s has %s USD left',
                         p_agent_id, p_asked, p_levels[t], p_ids[t], v_min),
        DETAIL = format('remaining_usd=%s budget_id=%s level=%s period_start=%s', v_min, p_ids[t], p_levels[t],
                        p_periods[t]),
        HINT = 'Lower the estimate, wait for open reservations to settle, or raise the limit.';
END;
$$;

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
    ch record;
    v_slices smallint[];
    v_id bigint;
    v record;
    v_min numeric;
    v_expires timestamptz;
    r budget_reservation%ROWTYPE;
BEGIN
    IF p_agent_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'agent_id must not be NULL';
    END IF;
    v_estimate := p_estimate_usd;
    IF p_estimate_usd IS NULL
       OR NOT (p_estimate_usd >= 0 AND p_estimate_usd <= 1000000 AND p_estimate_usd = round(p_estimate_usd, 10)) THEN
        -- (the helper names the problem; the plain case is checked inline, see settle_budget)
        v_estimate := _assert_usd('estimate_usd', p_estimate_usd);
    END IF;
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
        v_key := p_idempotency_key;
        -- printable ASCII without surrounding spaces, at most 200 characters, passes the key rules as it is
        IF NOT (p_idempotency_key ~ '^[!-~]([ -~]*[!-~])?$' AND length(p_idempotency_key) <= 200) THEN
            v_key := _text_arg(p_idempotency_key, 'idempotency_key', 200, 800, 'key');
        END IF;
        IF v_key LIKE 'auto:%' THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('idempotency key %L is in the key space auto: reserved for reservations without a key',
                                 left(v_key, 200)),
                HINT = 'Use a key that does not start with auto:, or pass none.';
        END IF;
    ELSE
        v_key := 'auto:' || gen_random_uuid()::text;
    END IF;

    v_expires := now() + p_ttl;

    -- the common case in one statement (statements, not rows, are what this path costs: the profile in
    -- bench/budget/README.md): an agent whose only level is its own one-slice budget. The reservation row
    -- first (a concurrent call with the same key waits on it and then finds it), then the guarded hold. If
    -- the hold did not happen (the period row is missing, or the guard refused) the reservation row is there
    -- and the per-level path below takes the hold or refuses (SLB01 rolls the reservation row back).
    WITH fb AS (
        -- (the period inline: _period_start's CASE, kept in step; a function call costs an ACL check and a GUC switch)
            SELECT x.id, CASE x.period WHEN 'none' THEN timestamptz '1970-01-01 00:00:00+00'
                              WHEN 'daily' THEN date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                              WHEN 'weekly' THEN date_trunc('week', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                              ELSE date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' END AS ps, x.limit_usd * (1 + x.grace_ratio) AS cap, x.limit_usd,
               x.fail_policy
          FROM budget x
         WHERE x.agent_id = p_agent_id AND x.parent_id IS NULL AND x.limit_usd IS NOT NULL AND x.slices = 1
    ), fr AS (
        INSERT INTO budget_reservation (idempotency_key, agent_id, estimate_usd, budget_ids, period_starts, expires_at)
        SELECT v_key, p_agent_id, v_estimate, ARRAY[fb.id], ARRAY[fb.ps], v_expires FROM fb
        ON CONFLICT ON CONSTRAINT budget_reservation_idempotency_key_key DO NOTHING
        RETURNING budget_reservation.id
    ), fs AS (
        UPDATE budget_spend s SET reserved_usd = s.reserved_usd + v_estimate
          FROM fb, fr
         WHERE s.budget_id = fb.id AND s.period_start = fb.ps AND s.slice = 0
           AND s.spent_usd + s.reserved_usd + v_estimate <= s.cap_usd
        RETURNING s.cap_usd - s.spent_usd - s.reserved_usd AS remaining
    )
    SELECT fr.id, fs.remaining, fb.id AS budget_id, fb.ps, fb.cap, fb.limit_usd, fb.fail_policy
      INTO v FROM fb JOIN fr ON true LEFT JOIN fs ON true;
    IF v.id IS NOT NULL AND v.remaining IS NOT NULL THEN
        reservation_id := v.id; remaining_usd := v.remaining; expires_at := v_expires; fail_policy := v.fail_policy;
        replayed := false;
        RETURN NEXT;
        RETURN;
    ELSIF v.id IS NOT NULL THEN
        -- reserved, not yet held: the one level, through the general per-level statement
        reservation_id := v.id; expires_at := v_expires; fail_policy := v.fail_policy; replayed := false;
        v := _spend_apply(v.budget_id, v.ps, v.cap, 1, 0, 0, v_estimate, true, v.limit_usd, NULL);
        IF NOT v.ok THEN
            ch := _budget_chain_arrays(p_agent_id, now());
            PERFORM _budget_refused(p_agent_id, p_estimate_usd, ch.ids, ch.periods, ch.caps, ch.levels, 1, v_estimate);
        END IF;
        remaining_usd := v.remaining_usd;
        RETURN NEXT;
        RETURN;
    END IF;

    ch := _budget_chain_arrays(p_agent_id, now());
    IF ch.ids IS NULL THEN
        PERFORM 1 FROM agent_registry a WHERE a.id = p_agent_id;
        RAISE EXCEPTION USING ERRCODE = 'P0002',
            MESSAGE = CASE WHEN FOUND THEN format('agent %s has no budget', p_agent_id)
                           ELSE format('unknown agent %s', p_agent_id) END,
            HINT = 'Create one with set_budget(agent_id, limit_usd), or attach the agent to a team budget.';
    END IF;
    IF cardinality(ch.ids) = 1 AND ch.slices[1] > 1 THEN
        -- one level split over slices: the reservation row, the hold on one slice and the period's sums in one
        -- statement, in a subtransaction: a refusal (the slice is short, or its rows are missing) rolls it all
        -- back, keeping no lock on the slice (see 101_budget_spend.sql), and the general path below rebalances
        v_slices := ARRAY[floor(random() * ch.slices[1])::smallint];
        BEGIN
            WITH fr AS (
                INSERT INTO budget_reservation (idempotency_key, agent_id, estimate_usd, budget_ids, period_starts,
                                                slices, expires_at)
                VALUES (v_key, p_agent_id, v_estimate, ch.ids, ch.periods, v_slices, v_expires)
                ON CONFLICT ON CONSTRAINT budget_reservation_idempotency_key_key DO NOTHING
                RETURNING id
            ), fs AS (
                UPDATE budget_spend s SET reserved_usd = s.reserved_usd + v_estimate
                  FROM fr
                 WHERE s.budget_id = ch.ids[1] AND s.period_start = ch.periods[1] AND s.slice = v_slices[1]
                   AND s.spent_usd + s.reserved_usd + v_estimate <= s.cap_usd
                RETURNING s.cap_usd + coalesce(s.frozen_usd, 0) - s.spent_usd - s.reserved_usd AS room
            )
            SELECT fr.id,
                   -- the period's room: the held slice as the UPDATE left it (when it waited for another
                   -- session's change to that slice, the row it re-checked includes it, the statement's
                   -- snapshot does not), the other slices as of this statement
                   (SELECT coalesce(sum(x.cap_usd + coalesce(x.frozen_usd, 0)) - sum(x.spent_usd + x.reserved_usd), 0)
                      FROM budget_spend x WHERE x.budget_id = ch.ids[1] AND x.period_start = ch.periods[1]
                                            AND x.slice <> v_slices[1])
                   + fs.room AS remaining
              INTO v FROM fr, fs;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'SLZ00', MESSAGE = 'slice has no room (internal, never raised to callers)';
            END IF;
            reservation_id := v.id; remaining_usd := greatest(0, v.remaining); expires_at := v_expires;
            fail_policy := ch.agent_fail_policy; replayed := false;
            RETURN NEXT;
            RETURN;
        EXCEPTION WHEN SQLSTATE 'SLZ00' THEN
            v_slices := NULL;  -- (a replay, a short slice, missing rows: the general path)
        END;
    END IF;
    -- the slice each level's hold takes, chosen before the reservation row so that the row records it
    FOR i IN 1 .. cardinality(ch.ids) LOOP
        IF ch.slices[i] > 1 THEN
            v_slices := coalesce(v_slices, array_fill(0::smallint, ARRAY[cardinality(ch.ids)]));
            v_slices[i] := floor(random() * ch.slices[i])::smallint;
        END IF;
    END LOOP;

    -- the reservation row first: a concurrent call with the same key waits here for ours and then finds it
    IF p_idempotency_key IS NULL THEN
        -- a fresh key cannot conflict: a plain INSERT (ON CONFLICT costs a speculative insertion)
        INSERT INTO budget_reservation (idempotency_key, agent_id, estimate_usd, budget_ids, period_starts, slices,
                                        expires_at)
        VALUES (v_key, p_agent_id, v_estimate, ch.ids, ch.periods, v_slices, v_expires)
        RETURNING id INTO v_id;
    ELSE
        INSERT INTO budget_reservation (idempotency_key, agent_id, estimate_usd, budget_ids, period_starts, slices,
                                        expires_at)
        VALUES (v_key, p_agent_id, v_estimate, ch.ids, ch.periods, v_slices, v_expires)
        ON CONFLICT ON CONSTRAINT budget_reservation_idempotency_key_key DO NOTHING
        RETURNING id INTO v_id;
    END IF;
    IF v_id IS NULL THEN
        SELECT * INTO r FROM budget_reservation br WHERE br.idempotency_key = v_key;
        IF r.agent_id <> p_agent_id OR r.estimate_usd <> v_estimate THEN
            RAISE EXCEPTION USING ERRCODE = '23505',
                MESSAGE = format('idempotency key %s already used by reservation %s (agent %s, estimate %s)',
                                 _text_quote(v_key), r.id, r.agent_id, r.estimate_usd);
        END IF;
        FOR i IN 1 .. cardinality(r.budget_ids) LOOP
            v_min := least(v_min, (_spend_period_room(r.budget_ids[i], r.period_starts[i])).remaining_usd);
        END LOOP;
        reservation_id := r.id; remaining_usd := v_min; expires_at := r.expires_at; fail_policy := ch.agent_fail_policy;
        replayed := true;
        RETURN NEXT;
        RETURN;
    END IF;

    -- one guarded statement per level, in lock order; a refusal rolls back the levels already held
    FOR i IN 1 .. cardinality(ch.ids) LOOP
        v := _spend_apply(ch.ids[i], ch.periods[i], ch.caps[i], ch.slices[i], coalesce(v_slices[i], 0), 0, v_estimate,
                          true, ch.limits[i], NULL);
        IF NOT v.ok THEN
            PERFORM _budget_refused(p_agent_id, p_estimate_usd, ch.ids, ch.periods, ch.caps, ch.levels, i, v_estimate);
        END IF;
        v_min := least(v_min, v.remaining_usd);
    END LOOP;
    -- OUT values and RETURN NEXT (no query: a RETURN QUERY is one more statement to execute)
    reservation_id := v_id; remaining_usd := v_min; expires_at := v_expires; fail_policy := ch.agent_fail_policy;
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

-- settle_budget: writes the ledger row for a reservation and turns its hold into spend, in one transaction
-- (sql/functions/131_reservation_settle.sql).
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
    v record;
    v_actual numeric;
    v_priced numeric;
    v_cost numeric;
    v_tokens bigint;
BEGIN
    IF p_reservation_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'reservation_id must not be NULL';
    END IF;
    -- Validation: a value that plainly passes (an amount in range with at most 10 decimals, a token count in
    -- range, printable ASCII text without surrounding spaces) is checked inline; anything else goes to the
    -- helper that owns the rule, which names the problem (or accepts the value). Each helper call costs a
    -- function lookup, a permission check and a GUC switch per transaction, which the common case skips.
    v_actual := p_actual_usd;
    IF p_actual_usd IS NOT NULL
       AND NOT (p_actual_usd >= 0 AND p_actual_usd <= 1000000 AND p_actual_usd = round(p_actual_usd, 10)) THEN
        v_actual := _assert_usd('actual_usd', p_actual_usd);
    END IF;
    IF p_input_tokens IS NULL OR p_input_tokens < 0 OR p_input_tokens > 1000000000000 THEN
        v_tokens := _assert_tokens('input_tokens', p_input_tokens);
    END IF;
    IF p_output_tokens IS NULL OR p_output_tokens < 0 OR p_output_tokens > 1000000000000 THEN
        v_tokens := _assert_tokens('output_tokens', p_output_tokens);
    END IF;
    -- printable ASCII without surrounding spaces (at most 200 characters) is canonical as it is; anything else
    -- goes through the text rules, and their canonical form is what the ledger stores (005_text.sql). Both
    -- values are tested by one match (a regular expression's execution costs more than its test; a line feed
    -- is in neither plain value), and the helpers name the value that fails.
    IF p_model IS NULL OR p_provider IS NULL
       OR NOT ((p_model || E'\n' || p_provider) ~ '^[!-~]([ -~]*[!-~])?\n[!-~]([ -~]*[!-~])?$'
               AND length(p_model) <= 200 AND length(p_provider) <= 200) THEN
        p_model := _assert_text('model', p_model);
        p_provider := _assert_text('provider', p_provider);
    END IF;
    IF p_metadata IS NOT NULL AND jsonb_typeof(p_metadata) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('metadata must be a JSON object, got %s', jsonb_typeof(p_metadata));
    END IF;
    IF v_actual IS NULL THEN
        -- the cost from the price table (else the price is looked up in the settling statement itself)
        v_priced := _price(p_provider, p_model, now(), p_input_tokens, p_output_tokens);
        IF v_priced > 100000000 THEN
            RAISE EXCEPTION USING ERRCODE = '22003',
                MESSAGE = format('priced cost of %s input + %s output tokens of %s/%s is %s USD, above 100000000',
                                 p_input_tokens, p_output_tokens, p_provider, p_model, v_priced);
        END IF;
        -- (no price: no cost; only a replay of a settled reservation can succeed then)
        v_cost := CASE WHEN v_priced IS NOT NULL THEN _assert_usd('priced actual_usd', v_priced) END;
    ELSE
        v_cost := v_actual;
    END IF;
    v := _reservation_settle(p_reservation_id, 'settle', NULL, v_cost, v_actual, v_priced,
                             CASE WHEN v_actual IS NULL THEN 'price_table' ELSE 'client' END,
                             p_input_tokens, p_output_tokens, p_model, p_provider, coalesce(p_metadata, '{}'::jsonb),
                             now(), CASE WHEN v_actual IS NOT NULL THEN now() END);
    ledger_id := v.ledger_id; reservation_id := p_reservation_id; estimate_usd := v.estimate_usd;
    actual_usd := v.actual_usd::numeric(20,10); overrun_usd := v.overrun_usd::numeric(20,10); replayed := v.replayed;
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION sigledger.settle_budget(bigint, numeric, bigint, bigint, text, text, jsonb) IS
'Settles a reservation with the actual cost (NULL: priced from tokens and model): writes the ledger row
(idempotency key reservation:<id>) and releases the hold in one transaction; returns (ledger_id,
reservation_id, estimate_usd, actual_usd, overrun_usd, replayed). Idempotent: settling again returns the same
row (a different actual: SLB03). An actual above the estimate is charged in full, reported as overrun_usd and
listed in view budget_overruns. Expired reservation: SLB02 (record the cost with record_cost); released: SLB03.
Its ledger key held by a row of the same agent written before the key space was reserved: adopted when the
actual is omitted or equal to that row''s cost, else 23505 naming both amounts (nothing changes).
SQLSTATE: 22004, 22023, 22003, 23505, P0002, SLB02, SLB03, 55P03';

-- release_budget: voids an open reservation (the call did not happen). Idempotent.
CREATE OR REPLACE FUNCTION sigledger.release_budget(p_reservation_id bigint)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    r record;
    v_levels integer;
BEGIN
    IF p_reservation_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'reservation_id must not be NULL';
    END IF;
    -- open -> released in one statement (it waits for a concurrent settle or expiry of the row, then re-reads it)
    UPDATE budget_reservation br SET state = 'released', closed_at = now()
     -- (COLLATE "C": the row by its primary key, never by a scan of the partial index of open reservations; see
     -- _reservation_settle)
     WHERE br.id = p_reservation_id AND br.state = 'open' COLLATE "C"
    RETURNING br.budget_ids, br.period_starts, br.slices, br.estimate_usd, _reservation_levels(br.budget_ids) AS levels
         INTO r;
    IF FOUND THEN
        -- the spend rows last (hot rows locked only until commit)
        v_levels := _reservation_charge(r.budget_ids, r.period_starts, r.slices, r.levels, 0, r.estimate_usd);
        RETURN 'released';
    END IF;
    SELECT br.id, br.state, br.ledger_id INTO r FROM budget_reservation br WHERE br.id = p_reservation_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown reservation %s', p_reservation_id);
    END IF;
    IF r.state = 'settled' THEN
        RAISE EXCEPTION USING ERRCODE = 'SLB03',
            MESSAGE = format('reservation %s is already settled (ledger %s) and cannot be released', r.id, r.ledger_id);
    END IF;
    RETURN r.state;  -- released or expired: the hold is already gone
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
    v record;
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
            RETURNING br.budget_ids, br.period_starts, br.slices, br.estimate_usd
        ), holds AS (
            SELECT u.budget_id, u.period_start, coalesce(u.slice, 0) AS slice, sum(e.estimate_usd) AS amount
              FROM expired e
             CROSS JOIN LATERAL unnest(e.budget_ids, e.period_starts, e.slices) AS u(budget_id, period_start, slice)
             GROUP BY 1, 2, 3
        )
        SELECT h.budget_id, h.period_start, h.slice, h.amount, b.limit_usd * (1 + b.grace_ratio) AS cap, b.slices,
               (SELECT count(*) FROM expired) AS n
          FROM holds h JOIN budget b ON b.id = h.budget_id
         -- the global lock order
         ORDER BY CASE b.level WHEN 'org' THEN 0 WHEN 'team' THEN 1 ELSE 2 END, h.budget_id, h.period_start, h.slice
    LOOP
        v := _spend_apply(x.budget_id, x.period_start, x.cap, x.slices, x.slice, 0, -x.amount, false, NULL, NULL);
        v_count := x.n;
    END LOOP;
    RETURN v_count;
END;
$$;
COMMENT ON FUNCTION sigledger.expire_reservations(integer) IS
'Releases the holds of open reservations past their TTL (at most limit of them) and returns how many expired.
Reservations locked by a concurrent settle/release are skipped.
SQLSTATE: 22023, 55P03';
