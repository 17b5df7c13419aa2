-- 140: check_and_record_budget, the seed's API kept for applications written against it, made atomic:
-- the check and the spend are one guarded UPDATE per level (no check-then-record window, no overspend).

DROP FUNCTION IF EXISTS sigledger._car_apply(uuid, bigint[], timestamptz[], numeric[], numeric[], text[], numeric,
                                             bigint, boolean);

-- _car_refusal: (remaining, version) reported with allowed = false: the least room over the chain's levels and
-- the version of its last level; SLV01 when an expected version no longer matches.
CREATE OR REPLACE FUNCTION sigledger._car_refusal(p_agent_id uuid, p_ids bigint[], p_periods timestamptz[],
                                                  p_expected_version bigint,
                                                  OUT remaining_usd numeric, OUT version bigint)
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v record;
BEGIN
    FOR i IN 1 .. cardinality(p_ids) LOOP
        v := sigledger._spend_period_room(p_ids[i], p_periods[i]);
        remaining_usd := least(remaining_usd, v.remaining_usd);  -- (a level without rows yet is not the tightest)
        version := coalesce(v.version, 0);
    END LOOP;
    IF p_expected_version IS NOT NULL AND version <> p_expected_version THEN
        RAISE EXCEPTION USING ERRCODE = 'SLV01',
            MESSAGE = format('version conflict on agent %s: expected version %s, current version %s',
                             p_agent_id, p_expected_version, version),
            DETAIL = format('current_version=%s', version),
            HINT = 'Re-read the version (budget_status) and retry, or pass expected_version => NULL.';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION sigledger.check_and_record_budget(
    p_agent_id uuid,
    p_cost_usd numeric,
    p_expected_version bigint DEFAULT NULL,
    p_nowait boolean DEFAULT false)
RETURNS TABLE (allowed boolean, remaining_usd numeric, version bigint, ledger_id bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    ch record;
    v record;
    v_ledger bigint;
    v_cost numeric;
    n integer;
    v_slice integer;
    v_alerts integer;
    v_done boolean := false;
    v_refused boolean := false;
    b_id bigint;
    b_period timestamptz;
    b_slices integer;
    b_limit numeric;
    b_thresholds numeric[];
    f_spent numeric;
    f_crossed boolean;
BEGIN
    IF p_agent_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'agent_id must not be NULL';
    END IF;
    -- exact to 1e-10 (22003 beyond), so that the spend and the ledger add up to the same amount
    v_cost := p_cost_usd;
    IF p_cost_usd IS NULL OR NOT (p_cost_usd >= 0 AND p_cost_usd <= 1000000 AND p_cost_usd = round(p_cost_usd, 10)) THEN
        v_cost := _assert_usd('cost_usd', p_cost_usd);  -- names the problem (the plain case is checked inline)
    END IF;
    IF p_expected_version IS NULL AND NOT p_nowait THEN
        -- the common case in one statement (statements, not rows, are what this path costs: the profile in
        -- bench/budget/README.md): an agent whose only level is its own one-slice budget, with the period row
        -- in place and room for the cost. The guarded spend, then the ledger row (the same writes, in the same
        -- order, as the bare SQL); when the guard refuses or anything is missing, nothing was written and the
        -- general path below decides.
        WITH s AS (
            -- (the budget row by an InitPlan, not a join: no nested loop to set up per call)
            UPDATE budget_spend s SET spent_usd = s.spent_usd + v_cost
             WHERE (s.budget_id, s.period_start) =
                   (SELECT x.id,
                           -- the period inline: _period_start's CASE, kept in step (a function call costs a
                           -- permission check and a GUC switch)
                           CASE x.period WHEN 'none' THEN timestamptz '1970-01-01 00:00:00+00'
                                WHEN 'daily' THEN date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                WHEN 'weekly' THEN date_trunc('week', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                ELSE date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' END
                      FROM budget x
                     WHERE x.agent_id = p_agent_id AND x.parent_id IS NULL AND x.limit_usd IS NOT NULL AND x.slices = 1)
               AND s.slice = 0 AND s.spent_usd + s.reserved_usd + v_cost <= s.cap_usd
            RETURNING s.budget_id, s.period_start, s.cap_usd - s.spent_usd - s.reserved_usd AS remaining, s.spent_usd,
                      s.version, s.next_alert_usd IS NULL OR s.spent_usd >= s.next_alert_usd AS crossed
        ), l AS (
            INSERT INTO llm_cost_log (idempotency_key, agent_id, provider, model, cost_usd, cost_source, charged_at,
                                      metadata)
            SELECT 'check:' || gen_random_uuid()::text, p_agent_id, 'unspecified', 'unspecified', v_cost, 'client', now(),
                   '{"api": "check_and_record_budget"}'::jsonb
              FROM s
            RETURNING id
        )
        -- (into the OUT columns and scalars: a record target costs a row descriptor and a copy per call)
        SELECT true, s.remaining, s.version, (SELECT l.id FROM l), s.budget_id, s.period_start, s.spent_usd, s.crossed
          INTO allowed, remaining_usd, version, ledger_id, b_id, b_period, f_spent, f_crossed FROM s;
        IF FOUND THEN
            IF f_crossed THEN
                -- the spend reached the period's next alert boundary (next_alert_usd; or it is not known yet)
                v_alerts := _spend_crossed(b_id, b_period, f_spent - v_cost, f_spent);
            END IF;
            RETURN NEXT;
            RETURN;
        END IF;
        -- an agent whose only level is its own budget split over slices: its budget row by a plain query (the
        -- chain function below costs a call, a GUC switch and a statement per level)
        SELECT x.id, x.slices, _period_start(x.period, now()), x.limit_usd, x.alert_thresholds
          INTO b_id, b_slices, b_period, b_limit, b_thresholds
          FROM budget x
         WHERE x.agent_id = p_agent_id AND x.parent_id IS NULL AND x.limit_usd IS NOT NULL AND x.slices > 1;
    END IF;
    IF b_id IS NULL THEN
        ch := _budget_chain_arrays(p_agent_id, now());
        n := coalesce(cardinality(ch.ids), 0);
        IF n = 1 AND ch.slices[1] > 1 AND p_expected_version IS NULL AND NOT p_nowait THEN
            b_id := ch.ids[1]; b_period := ch.periods[1]; b_slices := ch.slices[1]; b_limit := ch.limits[1];
            b_thresholds := ch.thresholds[1]::numeric[];
        END IF;
    END IF;
    IF b_id IS NOT NULL THEN
        -- one level split over slices: the ledger row, then the guarded spend on one slice and the period's sums,
        -- in one statement, in a subtransaction: a refusal (the slice is short, or its rows are missing) rolls it
        -- all back, the ledger row included, keeping no lock on the slice (see 101_budget_spend.sql), and the
        -- general path below rebalances. The ledger row is written first so that the slice's row lock, which
        -- orders the costs charged to that slice, is held only from the spend update to commit.
        v_slice := floor(random() * b_slices)::integer;
        BEGIN
            WITH l AS (
                INSERT INTO llm_cost_log (idempotency_key, agent_id, provider, model, cost_usd, cost_source, charged_at,
                                          metadata)
                VALUES ('check:' || gen_random_uuid()::text, p_agent_id, 'unspecified', 'unspecified', v_cost, 'client',
                        now(), '{"api": "check_and_record_budget"}'::jsonb)
                RETURNING id
            ), s AS (
                -- ((SELECT l.id FROM l) IS NOT NULL: the ledger insert runs first, as an InitPlan)
                UPDATE budget_spend s SET spent_usd = s.spent_usd + v_cost
                 WHERE s.budget_id = b_id AND s.period_start = b_period AND s.slice = v_slice
                   AND s.spent_usd + s.reserved_usd + v_cost <= s.cap_usd AND (SELECT l.id FROM l) IS NOT NULL
                -- the slice as it is after this change: when this UPDATE waited for another session's charge to
                -- the same slice, the row it re-checked and changed includes that charge, which the statement's
                -- snapshot (t below) does not
                RETURNING s.cap_usd + coalesce(s.frozen_usd, 0) - s.spent_usd - s.reserved_usd AS room, s.spent_usd,
                          s.version
            ), t AS (
                -- the other slices of the period as of this statement
                SELECT sum(x.cap_usd + coalesce(x.frozen_usd, 0)) - sum(x.spent_usd + x.reserved_usd) AS room,
                       sum(x.spent_usd) AS spent, sum(x.version) AS version,
                       (SELECT max(a.threshold) FROM budget_alert a
                         WHERE a.budget_id = b_id AND a.period_start = b_period) AS alerted
                  FROM budget_spend x WHERE x.budget_id = b_id AND x.period_start = b_period AND x.slice <> v_slice
            )
            SELECT (SELECT l.id FROM l) AS ledger_id, coalesce(t.room, 0) + s.room AS remaining,
                   coalesce(t.spent, 0) + s.spent_usd AS spent, coalesce(t.version, 0) + s.version AS version, t.alerted
              INTO v FROM s, t;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'SLZ00', MESSAGE = 'slice has no room (internal, never raised to callers)';
            END IF;
            v_done := true;
        EXCEPTION WHEN SQLSTATE 'SLZ00' THEN
            v_done := false;
        END;
        IF v_done THEN
            -- a sliced period's alerts test its sum ("reached and not yet alerted", 101_budget_spend.sql); no
            -- statement runs unless a threshold is reached
            v_alerts := _spend_alerts(b_id, b_period, b_limit, b_thresholds, coalesce(v.alerted, 0) * b_limit, v.spent);
            allowed := true; remaining_usd := greatest(0, v.remaining); version := v.version; ledger_id := v.ledger_id;
            RETURN NEXT;
            RETURN;
        END IF;
        IF n IS NULL THEN
            -- (the budget row came from the fast path: the general path needs the whole chain)
            ch := _budget_chain_arrays(p_agent_id, now());
            n := coalesce(cardinality(ch.ids), 0);
        END IF;
    END IF;
    IF n = 0 THEN
        PERFORM 1 FROM agent_registry a WHERE a.id = p_agent_id;
        RAISE EXCEPTION USING ERRCODE = 'P0002',
            MESSAGE = CASE WHEN FOUND THEN format('agent %s has no budget', p_agent_id)
                           ELSE format('unknown agent %s', p_agent_id) END;
    END IF;
    IF p_expected_version IS NOT NULL AND ch.slices[n] > 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('expected_version cannot be compared on budget %s: it is split over %s slices',
                             ch.ids[n], ch.slices[n]),
            HINT = 'Pass expected_version => NULL (the guarded update needs no version), or set the budget to one slice.';
    END IF;
    IF n = 1 AND NOT p_nowait THEN
        -- one level: the guarded spend first (a refusal changes nothing, so no subtransaction is needed), then the
        -- ledger row (the bare SQL of the same writes holds the row for its insert as well)
        v := _spend_apply(ch.ids[1], ch.periods[1], ch.caps[1], ch.slices[1], NULL, v_cost, 0, true, ch.limits[1],
                          ch.thresholds[1]::numeric[], p_expected_version);
        IF NOT v.ok THEN
            v := _car_refusal(p_agent_id, ch.ids, ch.periods, p_expected_version);
            allowed := false; remaining_usd := v.remaining_usd; version := v.version; ledger_id := NULL;
            RETURN NEXT;
            RETURN;
        END IF;
        INSERT INTO llm_cost_log (idempotency_key, agent_id, provider, model, cost_usd, cost_source, charged_at, metadata)
        VALUES ('check:' || gen_random_uuid()::text, p_agent_id, 'unspecified', 'unspecified', v_cost, 'client',
                now(), '{"api": "check_and_record_budget"}'::jsonb)
        RETURNING id INTO v_ledger;
        allowed := true; remaining_usd := v.remaining_usd; version := v.version; ledger_id := v_ledger;
        RETURN NEXT;
        RETURN;
    END IF;
    BEGIN
        -- several levels (or NOWAIT): the ledger row first and the hot budget rows last, in a block that a refusal
        -- rolls back (the ledger row and the levels already charged included)
        INSERT INTO llm_cost_log (idempotency_key, agent_id, provider, model, cost_usd, cost_source, charged_at, metadata)
        VALUES ('check:' || gen_random_uuid()::text, p_agent_id, 'unspecified', 'unspecified', v_cost, 'client',
                now(), '{"api": "check_and_record_budget"}'::jsonb)
        RETURNING id INTO v_ledger;
        FOR i IN 1 .. n LOOP
            v_slice := CASE WHEN ch.slices[i] > 1 THEN floor(random() * ch.slices[i])::integer ELSE 0 END;
            IF p_nowait THEN
                -- the seed's fail-fast mode, only on request: 55P03 when another session holds the row
                PERFORM 1 FROM budget_spend s
                 WHERE s.budget_id = ch.ids[i] AND s.period_start = ch.periods[i] AND s.slice = v_slice
                   FOR UPDATE NOWAIT;
            END IF;
            v := _spend_apply(ch.ids[i], ch.periods[i], ch.caps[i], ch.slices[i], v_slice, v_cost, 0, true,
                              ch.limits[i], ch.thresholds[i]::numeric[],
                              CASE WHEN i = n THEN p_expected_version END);
            IF NOT v.ok THEN
                RAISE EXCEPTION USING ERRCODE = 'SLB01', MESSAGE = format('level %s refused', i);
            END IF;
            remaining_usd := least(remaining_usd, v.remaining_usd);
            version := v.version;
        END LOOP;
    EXCEPTION WHEN SQLSTATE 'SLB01' THEN
        v_refused := true;
    END;
    IF v_refused THEN
        v := _car_refusal(p_agent_id, ch.ids, ch.periods, p_expected_version);
        allowed := false; remaining_usd := v.remaining_usd; version := v.version; ledger_id := NULL;
    ELSE
        allowed := true; ledger_id := v_ledger;
    END IF;
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION sigledger.check_and_record_budget(uuid, numeric, bigint, boolean) IS
'The seed''s API, atomic: checks and records cost_usd against the agent''s budget (and team/org levels) in one
guarded statement per level and returns (allowed, remaining_usd, version, ledger_id). allowed = false changes
nothing. expected_version (optional) must equal the version of the agent''s current spend row (incremented by
trigger on every change), else SLV01 with DETAIL current_version=N. nowait = true reproduces the seed''s fail-fast
lock (55P03 when the row is busy); the default waits at most lock_timeout (5s). Allowed costs get a ledger row
(provider/model ''unspecified'').
SQLSTATE: 22004, 22023, 22003, P0002, SLV01, 55P03';
