-- 131: settling a reservation (internal): settle_budget, settle_budgets, and record_cost / record_costs of a
-- cost under a reservation's own key.
--
-- The ledger key of a settlement, reservation:<id>, belongs to the database (issue 11): an application key
-- in that space is never stored as the application's own. record_cost(p_idempotency_key => 'reservation:<id>')
-- means "the cost of reservation <id>" and comes here: the agent must be the reservation's, and the cost is
-- charged to it (settling the reservation when it is still open). So no key of an application can take the
-- place of a settlement and no settle reports success without charging its actual to its own agent.
-- Other reserved key spaces: check:<uuid> (check_and_record_budget's ledger rows) and auto:<uuid>
-- (reserve_budget's own reservation keys) are refused to applications (22023).
--
-- Lock order: the ledger key (registry row), then the reservation row, then the spend rows of the
-- reservation's levels in lock order. A concurrent settle of the same reservation waits on the key and then
-- finds it (a replay); expire_reservations skips a reservation whose row is locked.

-- _reservation_charge: books a settled or recorded cost on every level a reservation held: p_spent added to
-- spend and p_release taken from the holds, on the reservation's own slice of each level (unguarded: the call
-- has happened; what exceeds the room of the whole period becomes excess). The levels' settings come as
-- arrays in the reservation's lock order (_reservation_levels; no parameter of a table's row type, which
-- would tie the function to the table).
DROP FUNCTION IF EXISTS sigledger._reservation_charge(bigint[], timestamptz[], smallint[], sigledger.budget[], numeric, numeric);
DROP FUNCTION IF EXISTS sigledger._reservation_budgets(bigint[]);
CREATE OR REPLACE FUNCTION sigledger._reservation_charge(
    p_budget_ids bigint[], p_period_starts timestamptz[], p_slices smallint[], p_levels jsonb,
    p_spent numeric, p_release numeric)
RETURNS integer
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v record;
    l jsonb;
BEGIN
    FOR i IN 1 .. cardinality(p_budget_ids) LOOP
        l := p_levels -> (i - 1);
        v := sigledger._spend_apply(p_budget_ids[i], p_period_starts[i], (l ->> 'cap')::numeric,
                                    (l ->> 'slices')::integer, coalesce(p_slices[i], 0), p_spent, -p_release, false,
                                    (l ->> 'limit')::numeric, (l ->> 'thresholds')::numeric[]);
    END LOOP;
    RETURN cardinality(p_budget_ids);
END;
$$;

-- _reservation_levels: the settings of a reservation's levels, in its lock order, as a JSON array of
-- {cap, limit, thresholds, slices} (what _reservation_charge needs; numbers are exact in jsonb).
-- (one primary-key probe per level: a join of unnest() with budget gets a custom plan on every call, its
-- generic plan being costed for ten array elements, and planning it cost more than the whole settle)
CREATE OR REPLACE FUNCTION sigledger._reservation_levels(p_budget_ids bigint[])
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v jsonb := '[]'::jsonb;
    l jsonb;
BEGIN
    FOR i IN 1 .. cardinality(p_budget_ids) LOOP
        SELECT jsonb_build_object('cap', x.limit_usd * (1 + x.grace_ratio), 'limit', x.limit_usd,
                                  'thresholds', x.alert_thresholds::text, 'slices', x.slices)
          INTO l FROM sigledger.budget x WHERE x.id = p_budget_ids[i];
        v := v || jsonb_build_array(l);
    END LOOP;
    RETURN v;
END;
$$;

-- _reservation_settle: p_mode 'settle' (settle_budget) or 'record' (a cost recorded under the reservation's
-- key). p_cost: the validated cost (NULL: none could be computed; only a replay can succeed then). p_priced:
-- the price-table figure, or, when p_price_at is given, looked up here at that instant (in the same statement
-- as the writes on the common path; 22003 when it exceeds what the ledger holds). p_given:
-- the amount the caller passed (a replay compares it with the stored one), p_agent_id: the agent the caller
-- names ('record'; must be the reservation's). Returns the ledger row and whether this was a replay.
-- 'settle': open -> settled (ledger row, hold released, actual charged); settled -> replay; expired -> SLB02;
-- released -> SLB03. 'record': open -> settled as above; settled -> replay; expired or released (the hold
-- is gone) -> the cost is recorded and charged to the reservation's levels and period.
DROP FUNCTION IF EXISTS sigledger._reservation_settle(bigint, text, uuid, numeric, numeric, numeric, text, bigint,
                                                      bigint, text, text, jsonb, timestamptz);
CREATE OR REPLACE FUNCTION sigledger._reservation_settle(
    p_reservation_id bigint, p_mode text, p_agent_id uuid, p_cost numeric, p_given numeric, p_priced numeric,
    p_source text, p_input_tokens bigint, p_output_tokens bigint, p_model text, p_provider text, p_metadata jsonb,
    p_created_at timestamptz, p_price_at timestamptz DEFAULT NULL,
    OUT ledger_id bigint, OUT estimate_usd numeric, OUT actual_usd numeric, OUT overrun_usd numeric,
    OUT replayed boolean)
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_key text := 'reservation:' || p_reservation_id;
    v_priced numeric := p_priced;
    v_ledger bigint;
    v_stored bigint;
    v_stored_at timestamptz;
    v_now timestamptz := now();
    r record;
    o record;
    v_overrun numeric;
    v_levels integer;
BEGIN
    replayed := false;
    FOR attempt IN 1 .. 2 LOOP
        v_ledger := NULL;
        IF p_cost IS NOT NULL AND attempt = 1 THEN
            -- the common case in one statement (statements, not rows, are what settling costs: the profile in
            -- bench/budget/README.md): claim the key (a concurrent claimer of the same key waits here for us and
            -- then finds it taken), settle the open reservation of the right agent, write its ledger row, and,
            -- for a one-level reservation of a one-slice budget whose cost fits, release the hold and charge the
            -- cost. Whatever of this did not happen is done (or refused) by the general steps below.
            WITH fp AS (
                -- (the price lookup inline: _price's query, kept in step)
                SELECT CASE WHEN p_price_at IS NULL THEN p_priced
                            ELSE (SELECT round((p_input_tokens * mp.input_usd_per_mtok
                                                + p_output_tokens * mp.output_usd_per_mtok) / 1000000, 10)
                                    FROM sigledger.model_price mp
                                   WHERE mp.provider = p_provider AND mp.model = p_model AND mp.valid_from <= p_price_at
                                   ORDER BY mp.valid_from DESC LIMIT 1) END AS priced
            ), fr AS (
                -- the ledger row's key is registered by the ledger's own trigger (as for any insert); a key
                -- already taken (only by a row written before this release reserved the space: every writer of
                -- reservation:<id> holds this reservation's row lock) leaves it to the steps below
                UPDATE sigledger.budget_reservation br
                   SET state = 'settled', closed_at = v_now, actual_usd = p_cost,
                       overrun_usd = greatest(0, p_cost - br.estimate_usd),
                       ledger_id = nextval('sigledger.llm_cost_log_id_seq'::regclass)
                 -- found by its primary key, whatever the statistics say: neither test below can be answered
                 -- by an index (a plain state = 'open' matches the predicate of the partial index of open
                 -- reservations, and agent_id = <a constant> the agent's index: with statistics taken when few
                 -- were open, the planner scanned all of them, per call; tests/core/test_index_plans.py)
                 WHERE br.id = p_reservation_id AND br.state = 'open' COLLATE "C"
                   AND (br.agent_id = p_agent_id) IS NOT FALSE
                   AND NOT EXISTS (SELECT 1 FROM sigledger.llm_cost_log_key k WHERE k.idempotency_key = v_key)
                   AND (SELECT coalesce(fp.priced, 0) FROM fp) <= 100000000
                RETURNING br.agent_id, br.estimate_usd, br.budget_ids, br.period_starts, br.slices, br.created_at,
                          br.ledger_id
            ), fl AS (
                INSERT INTO sigledger.llm_cost_log (id, idempotency_key, agent_id, provider, model, tokens_input,
                                                   tokens_output, cost_usd, priced_usd, cost_source, reservation_id,
                                                   charged_at, created_at, metadata)
                OVERRIDING SYSTEM VALUE
                SELECT fr.ledger_id, v_key, fr.agent_id, p_provider, p_model, p_input_tokens, p_output_tokens, p_cost,
                       (SELECT fp.priced FROM fp), p_source, p_reservation_id, fr.created_at, p_created_at,
                       CASE WHEN p_cost > fr.estimate_usd
                            THEN p_metadata || jsonb_build_object('overrun_usd', p_cost - fr.estimate_usd)
                            ELSE p_metadata END
                  FROM fr
                RETURNING id
            ), fs AS (
                -- (FROM fl: the ledger row is written first, the hot spend row locked last, until commit)
                UPDATE sigledger.budget_spend s
                   SET spent_usd = s.spent_usd + p_cost, reserved_usd = s.reserved_usd - fr.estimate_usd
                  FROM fr, fl
                 WHERE cardinality(fr.budget_ids) = 1
                   AND s.budget_id = fr.budget_ids[1] AND s.period_start = fr.period_starts[1]
                   AND s.slice = coalesce(fr.slices[1], 0)
                   AND s.frozen_usd IS NULL AND s.spent_usd + s.reserved_usd + p_cost - fr.estimate_usd <= s.cap_usd
                   -- (an increase beyond the estimate on a slice other than 0 goes through _spend_apply: a refusal
                   -- there must keep no lock before a rebalance)
                   AND (p_cost <= fr.estimate_usd OR coalesce(fr.slices[1], 0) = 0)
                RETURNING s.budget_id, s.period_start, s.slice, s.spent_usd,
                          fr.slices IS NULL AND (s.next_alert_usd IS NULL OR s.spent_usd >= s.next_alert_usd) AS crossed
            )
            SELECT fr.ledger_id, fr.agent_id, fr.estimate_usd, fr.budget_ids, fr.period_starts, fr.slices,
                   fs.budget_id AS charged, fs.period_start, fs.spent_usd, fs.crossed,
                   -- a sliced period: its spend summed for its alerts, the charged slice as the UPDATE left it
                   -- (when it waited for another session's charge to that slice, the row it re-checked includes
                   -- that charge, which the statement's snapshot does not), the other slices as of this statement
                   CASE WHEN fr.slices IS NOT NULL AND fs.budget_id IS NOT NULL
                        THEN (SELECT coalesce(sum(x.spent_usd), 0) FROM sigledger.budget_spend x
                               WHERE x.budget_id = fs.budget_id AND x.period_start = fs.period_start
                                 AND x.slice <> fs.slice) + fs.spent_usd
                   END AS sliced_spent
              INTO r
              -- (no reservation settled, no row: the INTO sets r to NULLs)
              FROM fr LEFT JOIN fs ON true;
            IF r.agent_id IS NOT NULL THEN
                IF r.charged IS NULL THEN
                    -- several levels, slices, or a cost beyond the slice's room: level by level
                    v_levels := sigledger._reservation_charge(r.budget_ids, r.period_starts, r.slices,
                                                          sigledger._reservation_levels(r.budget_ids), p_cost,
                                                          r.estimate_usd);
                ELSIF r.crossed THEN
                    -- the spend reached the period's next alert boundary (or it is not known yet)
                    v_levels := sigledger._spend_crossed(r.charged, r.period_start, r.spent_usd - p_cost, r.spent_usd);
                ELSIF r.sliced_spent IS NOT NULL AND p_cost > 0 THEN
                    -- a sliced period's alerts test its sum ("reached and not yet alerted", 101_budget_spend.sql)
                    SELECT x.limit_usd, x.alert_thresholds,
                           (SELECT max(a.threshold) FROM sigledger.budget_alert a
                             WHERE a.budget_id = r.charged AND a.period_start = r.period_start) AS alerted
                      INTO o FROM sigledger.budget x WHERE x.id = r.charged;
                    v_levels := sigledger._spend_alerts(r.charged, r.period_start, o.limit_usd, o.alert_thresholds,
                                                        coalesce(o.alerted, 0) * o.limit_usd, r.sliced_spent);
                END IF;
                ledger_id := r.ledger_id; estimate_usd := r.estimate_usd; actual_usd := p_cost;
                overrun_usd := greatest(0, p_cost - r.estimate_usd);
                RETURN;
            END IF;
        ELSIF p_cost IS NOT NULL THEN
            -- the settlement's own key, the first one being taken (see below): claim it, then the same steps
            INSERT INTO sigledger.llm_cost_log_key AS k (idempotency_key, ledger_id, reservation_id, created_at)
            VALUES (v_key, nextval('sigledger.llm_cost_log_id_seq'::regclass), p_reservation_id, p_created_at)
            ON CONFLICT ON CONSTRAINT llm_cost_log_key_pkey DO NOTHING
            RETURNING k.ledger_id INTO v_ledger;
            IF v_ledger IS NOT NULL THEN
                UPDATE sigledger.budget_reservation br
                   SET state = 'settled', closed_at = v_now, actual_usd = p_cost,
                       overrun_usd = greatest(0, p_cost - br.estimate_usd), ledger_id = v_ledger
                 -- (COLLATE "C": by its primary key, as above)
                 WHERE br.id = p_reservation_id AND br.state = 'open' COLLATE "C"
                RETURNING br.agent_id, br.estimate_usd, br.budget_ids, br.period_starts, br.slices, br.created_at
                     INTO r;
                v_overrun := greatest(0, p_cost - r.estimate_usd);
                INSERT INTO sigledger.llm_cost_log (id, idempotency_key, agent_id, provider, model, tokens_input,
                                                   tokens_output, cost_usd, priced_usd, cost_source, reservation_id,
                                                   charged_at, created_at, metadata)
                OVERRIDING SYSTEM VALUE
                VALUES (v_ledger, v_key, r.agent_id, p_provider, p_model, p_input_tokens, p_output_tokens, p_cost,
                        v_priced, p_source, p_reservation_id, r.created_at, p_created_at,
                        CASE WHEN v_overrun > 0 THEN p_metadata || jsonb_build_object('overrun_usd', v_overrun)
                             ELSE p_metadata END);
                v_levels := sigledger._reservation_charge(r.budget_ids, r.period_starts, r.slices,
                                                      sigledger._reservation_levels(r.budget_ids), p_cost,
                                                      r.estimate_usd);
                ledger_id := v_ledger; estimate_usd := r.estimate_usd; actual_usd := p_cost; overrun_usd := v_overrun;
                RETURN;
            END IF;
        END IF;

        -- the slow path: the key is taken, the reservation is not open, not this agent's, or unknown
        IF p_price_at IS NOT NULL AND attempt = 1 THEN
            v_priced := sigledger._price(p_provider, p_model, p_price_at, p_input_tokens, p_output_tokens);
            IF v_priced > 100000000 THEN
                RAISE EXCEPTION USING ERRCODE = '22003',
                    MESSAGE = format('priced cost of %s input + %s output tokens of %s/%s is %s USD, above 100000000',
                                     p_input_tokens, p_output_tokens, p_provider, p_model, v_priced);
            END IF;
        END IF;
        SELECT * INTO r FROM sigledger.budget_reservation br WHERE br.id = p_reservation_id FOR UPDATE;
        IF NOT FOUND AND p_mode = 'record' THEN
            RAISE EXCEPTION USING ERRCODE = 'P0002',
                MESSAGE = format('unknown reservation %s', p_reservation_id),
                HINT = 'Keys reservation:<id> are reserved for the settlement of reservation <id>; choose another key.';
        ELSIF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown reservation %s', p_reservation_id);
        END IF;
        IF p_agent_id IS NOT NULL AND r.agent_id <> p_agent_id THEN
            RAISE EXCEPTION USING ERRCODE = '23505',
                MESSAGE = format('idempotency key %L belongs to reservation %s of agent %s, not agent %s',
                                 v_key, r.id, r.agent_id, p_agent_id),
                HINT = 'Keys reservation:<id> are reserved for the settlement of reservation <id>.';
        END IF;
        estimate_usd := r.estimate_usd;
        IF r.state = 'settled' THEN
            -- a replay; a different amount is a conflict, not a silent second answer (amounts are exact)
            IF p_given IS NOT NULL AND p_given IS DISTINCT FROM r.actual_usd THEN
                RAISE EXCEPTION USING ERRCODE = 'SLB03',
                    MESSAGE = format('reservation %s is already settled at %s USD, not %s', r.id, r.actual_usd, p_given);
            END IF;
            ledger_id := r.ledger_id; actual_usd := r.actual_usd; overrun_usd := r.overrun_usd; replayed := true;
            RETURN;
        ELSIF r.state = 'released' AND p_mode = 'settle' THEN
            RAISE EXCEPTION USING ERRCODE = 'SLB03',
                MESSAGE = format('reservation %s was released at %s and cannot be settled', r.id, r.closed_at);
        ELSIF r.state = 'expired' AND p_mode = 'settle' THEN
            RAISE EXCEPTION USING ERRCODE = 'SLB02',
                MESSAGE = format('reservation %s expired; its hold was released', r.id),
                DETAIL = format('expired_at=%s ledger_idempotency_key=reservation:%s', r.closed_at, r.id),
                HINT = 'Record the actual cost with record_cost(p_idempotency_key => ''reservation:<id>'', ...).';
        END IF;
        IF p_cost IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('actual cost omitted and no price for provider %L model %L', p_provider, p_model),
                HINT = 'Pass the actual cost, or add the model to the price table with add_model_price().';
        END IF;
        -- the row stored under the key, if any: the registry gives its id and created_at (the row's own: every
        -- writer registers the key with the row's created_at), then the row is read by both as values, so the
        -- plan reads its partition only. By id alone (or joined on the registry's created_at: pruned only as the
        -- join runs, every partition planned and set up) the plan looked for it partition by partition, month
        -- after month of history before the current one (tests/core/test_index_plans.py)
        SELECT k.ledger_id, k.created_at INTO v_stored, v_stored_at
          FROM sigledger.llm_cost_log_key k WHERE k.idempotency_key = v_key;
        SELECT l.id, l.agent_id, l.cost_usd, l.reservation_id INTO o
          FROM sigledger.llm_cost_log l WHERE l.id = v_stored AND l.created_at = v_stored_at;
        IF r.state IN ('expired', 'released') THEN
            -- 'record' after the hold is gone: the call happened, its cost is recorded and charged (under the
            -- reservation's row lock, which every writer of this key holds)
            IF o.id IS NULL THEN
                v_ledger := nextval('sigledger.llm_cost_log_id_seq'::regclass);
            ELSE
                -- recorded before (a replay of this record): the same agent and amount, else a conflict
                IF o.reservation_id IS DISTINCT FROM r.id OR o.agent_id <> r.agent_id
                   OR (p_given IS NOT NULL AND o.cost_usd <> p_given) THEN
                    RAISE EXCEPTION USING ERRCODE = '23505',
                        MESSAGE = format('idempotency key %L already records %s USD for agent %s (ledger %s), not %s',
                                         v_key, o.cost_usd, o.agent_id, o.id, p_given);
                END IF;
                ledger_id := o.id; actual_usd := o.cost_usd; overrun_usd := greatest(0, o.cost_usd - r.estimate_usd);
                replayed := true;
                RETURN;
            END IF;
            v_overrun := greatest(0, p_cost - r.estimate_usd);
            INSERT INTO sigledger.llm_cost_log (id, idempotency_key, agent_id, provider, model, tokens_input,
                                               tokens_output, cost_usd, priced_usd, cost_source, reservation_id,
                                               charged_at, created_at, metadata)
            OVERRIDING SYSTEM VALUE
            VALUES (v_ledger, v_key, r.agent_id, p_provider, p_model, p_input_tokens, p_output_tokens, p_cost,
                    v_priced, p_source, r.id, r.created_at, p_created_at, p_metadata);
            v_levels := sigledger._reservation_charge(r.budget_ids, r.period_starts, r.slices,
                                                  sigledger._reservation_levels(r.budget_ids), p_cost, 0);
            ledger_id := v_ledger; actual_usd := p_cost; overrun_usd := v_overrun;
            RETURN;
        END IF;
        -- open, and its key is taken by a row written before this release reserved the key space
        IF o.agent_id = r.agent_id AND o.reservation_id IS NULL THEN
            -- the agent's own cost recorded under the key while its settle could not run (how earlier builds
            -- recorded it): already charged, so settling releases the hold and reports that cost. Only when the
            -- caller gives no actual or the same one: another actual would be recorded nowhere (issue 11.1), so
            -- it is refused and nothing changes (reconcile_budgets lists the row for review)
            IF p_given IS NOT NULL AND p_given <> o.cost_usd THEN
                RAISE EXCEPTION USING ERRCODE = '23505',
                    MESSAGE = format('reservation %s: its ledger key %L holds row %s of agent %s at %s USD, written before the key space was reserved, not %s USD',
                                     r.id, v_key, o.id, o.agent_id, o.cost_usd, p_given),
                    HINT = 'Settle with that amount (or none) to adopt the row, or release the reservation; reconcile_budgets() lists the row.';
            END IF;
            v_overrun := greatest(0, o.cost_usd - r.estimate_usd);
            UPDATE sigledger.budget_reservation br
               SET state = 'settled', closed_at = v_now, actual_usd = o.cost_usd, overrun_usd = v_overrun,
                   ledger_id = o.id
             WHERE br.id = r.id;
            v_levels := sigledger._reservation_charge(r.budget_ids, r.period_starts, r.slices,
                                                  sigledger._reservation_levels(r.budget_ids), 0, r.estimate_usd);
            ledger_id := o.id; actual_usd := o.cost_usd; overrun_usd := v_overrun;
            RETURN;
        END IF;
        -- another agent's row (an application key that collided): the settlement takes a key of its own
        EXIT WHEN attempt = 2;
        v_key := 'reservation:' || p_reservation_id || ':settlement';
    END LOOP;
    RAISE EXCEPTION USING ERRCODE = '23505',
        MESSAGE = format('the ledger keys of reservation %s are taken by other rows (%L, %L)', p_reservation_id,
                         'reservation:' || p_reservation_id, v_key),
        HINT = 'reconcile_budgets() lists ledger rows that disagree with their reservations.';
END;
$$;
