-- 135: batch calls for agents that fan out tool calls: reserve_budgets and settle_budgets, many reservations in
-- one round trip, each item under the same rules as reserve_budget / settle_budget, each with its own result
-- (a refused or invalid item holds nothing and says why; the others go in) unless p_all_or_nothing.
--
-- Lock order (the singles' order, kept across a whole batch, so batches and singles never deadlock): the
-- reservation rows of all items first (inserted, or locked in id order), then every budget_spend row the batch
-- touches, locked up front in the global order (level, budget id, period, slice), then the changes item by
-- item in request order (no more waits: every row is already held).

-- _budget_tightest: the level of a chain with the least room for p_asked (for SLB01; the refusing level p_failed
-- on a tie; levels before it already carry p_held of this call, added back).
CREATE OR REPLACE FUNCTION sigledger._budget_tightest(
    p_ids bigint[], p_periods timestamptz[], p_caps numeric[], p_failed integer, p_held numeric,
    OUT idx integer, OUT room numeric)
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_room numeric;
BEGIN
    idx := p_failed;
    FOR i IN 1 .. cardinality(p_ids) LOOP
        v_room := coalesce((sigledger._spend_period_room(p_ids[i], p_periods[i])).remaining_usd, p_caps[i]);
        v_room := greatest(0, v_room + CASE WHEN i < p_failed THEN p_held ELSE 0 END);
        IF room IS NULL OR v_room < room OR (v_room = room AND i = p_failed) THEN
            room := v_room;
            idx := i;
        END IF;
    END LOOP;
END;
$$;

-- _reserve_check: reserve_budget's validation of one item (raises as reserve_budget would); the estimate and key.
CREATE OR REPLACE FUNCTION sigledger._reserve_check(p_agent_id uuid, p_estimate_usd numeric, p_key text,
                                                    OUT estimate_usd numeric, OUT key text)
LANGUAGE plpgsql IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_agent_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'agent_id must not be NULL';
    END IF;
    estimate_usd := sigledger._assert_usd('estimate_usd', p_estimate_usd);
    IF estimate_usd <= 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('estimate_usd must be greater than 0, got %s', p_estimate_usd);
    END IF;
    IF p_key IS NOT NULL THEN
        key := sigledger._text_arg(p_key, 'idempotency_key', 200, 800, 'key');
        IF key LIKE 'auto:%' THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('idempotency key %L is in the key space auto: reserved for reservations without a key',
                                 left(key, 200));
        END IF;
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION sigledger.reserve_budgets(
    p_requests jsonb,
    p_ttl interval DEFAULT interval '10 minutes',
    p_all_or_nothing boolean DEFAULT false)
RETURNS TABLE (ord integer, reservation_id bigint, remaining_usd numeric, expires_at timestamptz, replayed boolean,
               sqlstate text, message text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    n integer;
    x record;
    v record;
    ch record;
    r budget_reservation%ROWTYPE;
    v_expires timestamptz := now() + p_ttl;
    -- per item (index = position in the request)
    i_agent uuid[];
    i_est numeric[];
    i_key text[];
    i_res bigint[];
    i_state text[];
    i_msg text[];
    i_rem numeric[];
    i_replay boolean[];
    v_chain jsonb := '{}'::jsonb;
    vj jsonb;
    v_state text;
    v_msg text;
    v_slices smallint[];
    v_id bigint;
    t record;
    j integer;
BEGIN
    IF p_requests IS NULL OR jsonb_typeof(p_requests) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('requests must be a JSON array, got %s', coalesce(jsonb_typeof(p_requests), 'NULL'));
    END IF;
    n := jsonb_array_length(p_requests);
    IF n > 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('requests must hold at most 1000 items, got %s', n);
    END IF;
    IF p_ttl IS NULL OR p_ttl <= interval '0' OR p_ttl > interval '7 days' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('ttl must be greater than 0 and at most 7 days, got %s', coalesce(p_ttl::text, 'NULL'));
    END IF;
    IF p_all_or_nothing IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'all_or_nothing must not be NULL';
    END IF;
    i_agent := array_fill(NULL::uuid, ARRAY[n]); i_est := array_fill(NULL::numeric, ARRAY[n]);
    i_key := array_fill(NULL::text, ARRAY[n]); i_res := array_fill(NULL::bigint, ARRAY[n]);
    i_state := array_fill(NULL::text, ARRAY[n]); i_msg := array_fill(NULL::text, ARRAY[n]);
    i_rem := array_fill(NULL::numeric, ARRAY[n]); i_replay := array_fill(false, ARRAY[n]);

    -- 1. validation, item by item (writes nothing: a subtransaction without an XID)
    FOR x IN SELECT e.ordinality::integer AS k, e.value AS item FROM jsonb_array_elements(p_requests) WITH ORDINALITY e LOOP
        BEGIN
            IF jsonb_typeof(x.item) <> 'object' THEN
                RAISE EXCEPTION USING ERRCODE = '22023',
                    MESSAGE = format('request must be a JSON object, got %s', jsonb_typeof(x.item));
            END IF;
            v := _reserve_check((x.item ->> 'agent_id')::uuid, (x.item ->> 'estimate_usd')::numeric,
                                x.item ->> 'idempotency_key');
            i_agent[x.k] := (x.item ->> 'agent_id')::uuid;
            i_est[x.k] := v.estimate_usd;
            i_key[x.k] := coalesce(v.key, 'auto:' || gen_random_uuid()::text);
        EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
            i_state[x.k] := v_state; i_msg[x.k] := v_msg;
        END;
    END LOOP;

    -- 2. the chain of each agent (once per agent)
    FOR x IN SELECT DISTINCT a FROM unnest(i_agent) a WHERE a IS NOT NULL LOOP
        ch := _budget_chain_arrays(x.a, now());
        v_chain := v_chain || jsonb_build_object(x.a::text, to_jsonb(ch));
    END LOOP;
    FOR k IN 1 .. n LOOP
        CONTINUE WHEN i_state[k] IS NOT NULL;
        IF v_chain -> i_agent[k]::text ->> 'ids' IS NULL THEN
            PERFORM 1 FROM agent_registry a WHERE a.id = i_agent[k];
            i_state[k] := 'P0002';
            i_msg[k] := CASE WHEN FOUND THEN format('agent %s has no budget', i_agent[k])
                             ELSE format('unknown agent %s', i_agent[k]) END;
        END IF;
    END LOOP;

    -- 3. the reservation rows first (a concurrent call with the same key waits on ours, as with reserve_budget)
    FOR k IN 1 .. n LOOP
        CONTINUE WHEN i_state[k] IS NOT NULL;
        vj := v_chain -> i_agent[k]::text;
        v_slices := NULL;
        FOR l IN 1 .. jsonb_array_length(vj -> 'ids') LOOP
            IF (vj -> 'slices' ->> (l - 1))::integer > 1 THEN
                v_slices := coalesce(v_slices, array_fill(0::smallint, ARRAY[jsonb_array_length(vj -> 'ids')]));
                v_slices[l] := floor(random() * (vj -> 'slices' ->> (l - 1))::integer)::smallint;
            END IF;
        END LOOP;
        v_id := NULL;
        INSERT INTO budget_reservation (idempotency_key, agent_id, estimate_usd, budget_ids, period_starts, slices,
                                        expires_at)
        VALUES (i_key[k], i_agent[k], i_est[k],
                ARRAY(SELECT jsonb_array_elements_text(vj -> 'ids')::bigint),
                ARRAY(SELECT jsonb_array_elements_text(vj -> 'periods')::timestamptz), v_slices, v_expires)
        ON CONFLICT ON CONSTRAINT budget_reservation_idempotency_key_key DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NOT NULL THEN
            i_res[k] := v_id;
            CONTINUE;
        END IF;
        SELECT * INTO r FROM budget_reservation br WHERE br.idempotency_key = i_key[k];
        IF r.agent_id <> i_agent[k] OR r.estimate_usd <> i_est[k] THEN
            i_state[k] := '23505';
            i_msg[k] := format('idempotency key %L already used by reservation %s (agent %s, estimate %s)',
                               i_key[k], r.id, r.agent_id, r.estimate_usd);
        ELSE
            i_res[k] := r.id;
            i_replay[k] := true;
        END IF;
    END LOOP;

    -- 4. every spend row the new reservations hold on: created if missing, then locked in the global order
    -- (one period per budget, the one of now(): a creation, which takes the budget row FOR SHARE (101), never
    -- comes after a spend row of its own budget)
    FOR t IN
        SELECT DISTINCT u.bid, u.ps, coalesce(u.cap, 0) AS cap, u.ns, u.rank
          FROM generate_subscripts(i_res, 1) AS k
          JOIN budget_reservation br ON br.id = i_res[k] AND NOT i_replay[k]
         CROSS JOIN LATERAL (SELECT b.id AS bid, p.ps, b.limit_usd * (1 + b.grace_ratio) AS cap, b.slices AS ns,
                                    CASE b.level WHEN 'org' THEN 0 WHEN 'team' THEN 1 ELSE 2 END AS rank
                               FROM unnest(br.budget_ids, br.period_starts) AS p(bid, ps)
                               JOIN budget b ON b.id = p.bid) u
         ORDER BY u.rank, u.bid, u.ps
    LOOP
        j := _spend_ensure(t.bid, t.ps, t.cap, t.ns);
        PERFORM 1 FROM budget_spend s WHERE s.budget_id = t.bid AND s.period_start = t.ps ORDER BY s.slice FOR UPDATE;
    END LOOP;

    -- 5. the holds, item by item; a refused item gives its levels back and its reservation row is removed
    FOR k IN 1 .. n LOOP
        CONTINUE WHEN i_state[k] IS NOT NULL OR i_replay[k] OR i_res[k] IS NULL;
        SELECT * INTO r FROM budget_reservation br WHERE br.id = i_res[k];
        vj := v_chain -> i_agent[k]::text;
        FOR l IN 1 .. cardinality(r.budget_ids) LOOP
            t := _spend_apply(r.budget_ids[l], r.period_starts[l], (vj -> 'caps' ->> (l - 1))::numeric,
                              (vj -> 'slices' ->> (l - 1))::integer, coalesce(r.slices[l], 0), 0, r.estimate_usd, true,
                              (vj -> 'limits' ->> (l - 1))::numeric, NULL);
            IF NOT t.ok THEN
                x := _budget_tightest(r.budget_ids, r.period_starts,
                                      ARRAY(SELECT jsonb_array_elements_text(vj -> 'caps')::numeric), l, r.estimate_usd);
                i_state[k] := 'SLB01';
                i_msg[k] := format('budget exceeded: agent %s asks %s USD, %s budget %s has %s USD left',
                                   r.agent_id, i_est[k], vj -> 'levels' ->> (x.idx - 1), r.budget_ids[x.idx], x.room);
                IF p_all_or_nothing THEN
                    RAISE EXCEPTION USING ERRCODE = 'SLB01', MESSAGE = format('request %s: %s', k, i_msg[k]),
                        DETAIL = format('remaining_usd=%s budget_id=%s level=%s period_start=%s', x.room,
                                        r.budget_ids[x.idx], vj -> 'levels' ->> (x.idx - 1), r.period_starts[x.idx]),
                        HINT = 'Nothing of the batch was held (all_or_nothing).';
                END IF;
                FOR m IN 1 .. l - 1 LOOP
                    t := _spend_apply(r.budget_ids[m], r.period_starts[m], (vj -> 'caps' ->> (m - 1))::numeric,
                                      (vj -> 'slices' ->> (m - 1))::integer, coalesce(r.slices[m], 0), 0,
                                      -r.estimate_usd, false, NULL, NULL);
                END LOOP;
                DELETE FROM budget_reservation br WHERE br.id = r.id;
                i_res[k] := NULL;
                EXIT;
            END IF;
            i_rem[k] := least(i_rem[k], t.remaining_usd);
        END LOOP;
    END LOOP;
    IF p_all_or_nothing AND EXISTS (SELECT 1 FROM unnest(i_state) s WHERE s IS NOT NULL) THEN
        j := (SELECT min(k) FROM generate_subscripts(i_state, 1) k WHERE i_state[k] IS NOT NULL);
        RAISE EXCEPTION USING ERRCODE = i_state[j], MESSAGE = format('request %s: %s', j, i_msg[j]),
            HINT = 'Nothing of the batch was held (all_or_nothing).';
    END IF;

    FOR k IN 1 .. n LOOP
        ord := k; reservation_id := i_res[k]; remaining_usd := i_rem[k];
        expires_at := CASE WHEN i_res[k] IS NOT NULL AND NOT i_replay[k] THEN v_expires END;
        replayed := i_replay[k]; sqlstate := i_state[k]; message := i_msg[k];
        IF i_replay[k] THEN
            SELECT br.expires_at INTO expires_at FROM budget_reservation br WHERE br.id = i_res[k];
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION sigledger.reserve_budgets(jsonb, interval, boolean) IS
'Reserves many holds in one call (an agent fanning out tool calls): requests is a JSON array of at most 1000
objects {agent_id, estimate_usd, idempotency_key (optional)}, each under reserve_budget''s rules. Returns one
row per request, in order: (ord, reservation_id, remaining_usd, expires_at, replayed, sqlstate, message). A
refused (SLB01, naming the tightest level) or invalid item holds nothing and reports its SQLSTATE and message;
the others are held. all_or_nothing => true: any refused or invalid item raises its SQLSTATE and nothing is
held. Locks every spend row of the batch in the global order before changing any (no deadlock with other
batches or single calls).
SQLSTATE: 22004, 22023, SLB01, 55P03';

CREATE OR REPLACE FUNCTION sigledger.settle_budgets(p_settlements jsonb)
RETURNS TABLE (ord integer, reservation_id bigint, ledger_id bigint, estimate_usd numeric, actual_usd numeric,
               overrun_usd numeric, replayed boolean, sqlstate text, message text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    n integer;
    x record;
    v record;
    t record;
    i_item jsonb[];
    i_id bigint[];
    i_actual numeric[];
    i_state text[];
    i_msg text[];
    i_out jsonb[];
    j integer;
    v_state text;
    v_msg text;
BEGIN
    IF p_settlements IS NULL OR jsonb_typeof(p_settlements) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('settlements must be a JSON array, got %s', coalesce(jsonb_typeof(p_settlements), 'NULL'));
    END IF;
    n := jsonb_array_length(p_settlements);
    IF n > 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('settlements must hold at most 1000 items, got %s', n);
    END IF;
    i_item := array_fill(NULL::jsonb, ARRAY[n]); i_id := array_fill(NULL::bigint, ARRAY[n]);
    i_actual := array_fill(NULL::numeric, ARRAY[n]); i_state := array_fill(NULL::text, ARRAY[n]);
    i_msg := array_fill(NULL::text, ARRAY[n]); i_out := array_fill(NULL::jsonb, ARRAY[n]);

    -- 1. validation, item by item (settle_budget's rules; writes nothing: a subtransaction without an XID)
    FOR x IN SELECT e.ordinality::integer AS k, e.value AS item FROM jsonb_array_elements(p_settlements) WITH ORDINALITY e LOOP
        BEGIN
            IF jsonb_typeof(x.item) <> 'object' THEN
                RAISE EXCEPTION USING ERRCODE = '22023',
                    MESSAGE = format('settlement must be a JSON object, got %s', jsonb_typeof(x.item));
            END IF;
            i_id[x.k] := (x.item ->> 'reservation_id')::bigint;
            IF i_id[x.k] IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'reservation_id must not be NULL';
            END IF;
            IF x.item ->> 'actual_usd' IS NOT NULL THEN
                i_actual[x.k] := _assert_usd('actual_usd', (x.item ->> 'actual_usd')::numeric);
            END IF;
            j := _assert_tokens('input_tokens', coalesce((x.item ->> 'input_tokens')::bigint, 0));
            j := _assert_tokens('output_tokens', coalesce((x.item ->> 'output_tokens')::bigint, 0));
            PERFORM _assert_text('model', coalesce(x.item ->> 'model', 'unspecified'));
            PERFORM _assert_text('provider', coalesce(x.item ->> 'provider', 'unspecified'));
            IF x.item -> 'metadata' IS NOT NULL AND jsonb_typeof(x.item -> 'metadata') NOT IN ('object', 'null') THEN
                RAISE EXCEPTION USING ERRCODE = '22023',
                    MESSAGE = format('metadata must be a JSON object, got %s', jsonb_typeof(x.item -> 'metadata'));
            END IF;
            i_item[x.k] := x.item;
        EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
            i_state[x.k] := v_state; i_msg[x.k] := v_msg; i_id[x.k] := NULL;
        END;
    END LOOP;

    -- 2. the reservation rows, locked in id order; then the spend rows of the open ones, in the global order
    PERFORM 1 FROM budget_reservation br WHERE br.id = ANY (i_id) ORDER BY br.id FOR UPDATE;
    FOR t IN
        SELECT DISTINCT p.bid, p.ps, CASE b.level WHEN 'org' THEN 0 WHEN 'team' THEN 1 ELSE 2 END AS rank
          FROM budget_reservation br
         CROSS JOIN LATERAL unnest(br.budget_ids, br.period_starts) AS p(bid, ps)
          JOIN budget b ON b.id = p.bid
         -- (COLLATE "C": the row by its primary key, never by a scan of the partial index of open reservations; see
         -- _reservation_settle)
         WHERE br.id = ANY (i_id) AND br.state = 'open' COLLATE "C"
         ORDER BY 3, 1, 2
    LOOP
        PERFORM 1 FROM budget_spend s WHERE s.budget_id = t.bid AND s.period_start = t.ps ORDER BY s.slice FOR UPDATE;
    END LOOP;

    -- 3. each item under settle_budget's rules; the states that would raise are answered per item
    FOR k IN 1 .. n LOOP
        CONTINUE WHEN i_state[k] IS NOT NULL;
        SELECT br.state, br.actual_usd, br.closed_at INTO t FROM budget_reservation br WHERE br.id = i_id[k];
        IF NOT FOUND THEN
            i_state[k] := 'P0002'; i_msg[k] := format('unknown reservation %s', i_id[k]);
        ELSIF t.state = 'released' THEN
            i_state[k] := 'SLB03';
            i_msg[k] := format('reservation %s was released at %s and cannot be settled', i_id[k], t.closed_at);
        ELSIF t.state = 'expired' THEN
            i_state[k] := 'SLB02'; i_msg[k] := format('reservation %s expired; its hold was released', i_id[k]);
        ELSIF t.state = 'settled' AND i_actual[k] IS NOT NULL AND i_actual[k] <> t.actual_usd THEN
            i_state[k] := 'SLB03';
            i_msg[k] := format('reservation %s is already settled at %s USD, not %s', i_id[k], t.actual_usd, i_actual[k]);
        ELSE
            SELECT * INTO v FROM settle_budget(i_id[k], i_actual[k], coalesce((i_item[k] ->> 'input_tokens')::bigint, 0),
                                               coalesce((i_item[k] ->> 'output_tokens')::bigint, 0),
                                               coalesce(i_item[k] ->> 'model', 'unspecified'),
                                               coalesce(i_item[k] ->> 'provider', 'unspecified'),
                                               coalesce(nullif(i_item[k] -> 'metadata', 'null'::jsonb), '{}'::jsonb));
            i_out[k] := to_jsonb(v);
        END IF;
    END LOOP;

    FOR k IN 1 .. n LOOP
        ord := k; reservation_id := i_id[k]; sqlstate := i_state[k]; message := i_msg[k];
        ledger_id := (i_out[k] ->> 'ledger_id')::bigint; estimate_usd := (i_out[k] ->> 'estimate_usd')::numeric;
        actual_usd := (i_out[k] ->> 'actual_usd')::numeric; overrun_usd := (i_out[k] ->> 'overrun_usd')::numeric;
        replayed := (i_out[k] ->> 'replayed')::boolean;
        RETURN NEXT;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION sigledger.settle_budgets(jsonb) IS
'Settles many reservations in one call: settlements is a JSON array of at most 1000 objects {reservation_id,
actual_usd, input_tokens, output_tokens, model, provider, metadata} (all but reservation_id optional, as with
settle_budget). Returns one row per item, in order: (ord, reservation_id, ledger_id, estimate_usd, actual_usd,
overrun_usd, replayed, sqlstate, message). An item that settle_budget would refuse (invalid values, unknown:
P0002, expired: SLB02, released or another actual: SLB03) changes nothing and reports its SQLSTATE and message;
the others are settled. Locks the reservation rows in id order, then every spend row of the batch in the global
order, before changing any.
SQLSTATE: 22023, 55P03';
