-- 140: check_and_record_budget, the seed's API kept for applications written against it, made atomic:
-- the check and the spend are one guarded UPDATE per level (no check-then-record window, no overspend).

-- _car_apply: the guarded spend at every level in lock order. The agent level (last) also compares the
-- version when one is expected. Returns (ok, remaining, version); a refusal at a parent level raises SLB01
-- (the caller rolls back the levels already charged), at the agent level it returns ok = false.
CREATE OR REPLACE FUNCTION sigledger._car_apply(
    p_agent_id uuid, p_ids bigint[], p_periods timestamptz[], p_caps numeric[], p_limits numeric[],
    p_thresholds text[], p_cost numeric, p_expected_version bigint, p_nowait boolean,
    OUT ok boolean, OUT remaining_usd numeric, OUT version bigint)
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    n integer := cardinality(p_ids);
    v_rem numeric;
    v_spent numeric;
    v_version bigint;
BEGIN
    ok := false;
    FOR i IN 1 .. n LOOP
        FOR attempt IN 1 .. 2 LOOP
            IF p_nowait THEN
                -- the seed's fail-fast mode, only on request: 55P03 when another session holds the row
                PERFORM 1 FROM sigledger.budget_spend s
                 WHERE s.budget_id = p_ids[i] AND s.period_start = p_periods[i] FOR UPDATE NOWAIT;
            END IF;
            UPDATE sigledger.budget_spend s
               SET spent_usd = s.spent_usd + p_cost
             WHERE s.budget_id = p_ids[i] AND s.period_start = p_periods[i]
               AND s.spent_usd + s.reserved_usd + p_cost <= s.cap_usd
               AND (i < n OR p_expected_version IS NULL OR s.version = p_expected_version)
            RETURNING s.cap_usd - s.spent_usd - s.reserved_usd, s.spent_usd, s.version
                 INTO v_rem, v_spent, v_version;
            EXIT WHEN FOUND OR attempt = 2;  -- the second UPDATE ran on an existing row: refused
            -- missing period row (first use), or inserted by a concurrent transaction not yet committed (the
            -- INSERT waits for it): ensure it, then redo the UPDATE, whose guard decides
            PERFORM sigledger._spend_ensure(p_ids[i], p_periods[i], p_caps[i]);
        END LOOP;
        IF v_rem IS NULL THEN
            SELECT greatest(0, s.cap_usd - s.spent_usd - s.reserved_usd), s.version INTO v_rem, v_version
              FROM sigledger.budget_spend s WHERE s.budget_id = p_ids[i] AND s.period_start = p_periods[i];
            IF i = n AND p_expected_version IS NOT NULL AND v_version <> p_expected_version THEN
                RAISE EXCEPTION USING ERRCODE = 'SLV01',
                    MESSAGE = format('version conflict on agent %s: expected version %s, current version %s',
                                     p_agent_id, p_expected_version, v_version),
                    DETAIL = format('current_version=%s', v_version),
                    HINT = 'Re-read the version (budget_status) and retry, or pass expected_version => NULL.';
            END IF;
            IF i < n THEN
                RAISE EXCEPTION USING ERRCODE = 'SLB01',
                    MESSAGE = format('budget exceeded: agent %s asks %s USD, budget %s has %s USD left',
                                     p_agent_id, p_cost, p_ids[i], v_rem),
                    DETAIL = format('remaining_usd=%s budget_id=%s', v_rem, p_ids[i]);
            END IF;
            remaining_usd := v_rem;
            version := v_version;
            RETURN;
        END IF;
        PERFORM sigledger._spend_alerts(p_ids[i], p_periods[i], p_limits[i], p_thresholds[i]::numeric[],
                                        v_spent - p_cost, v_spent);
        remaining_usd := least(remaining_usd, v_rem);
        version := v_version;
    END LOOP;
    ok := true;
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
BEGIN
    IF p_agent_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'agent_id must not be NULL';
    END IF;
    -- rounded to the ledger's scale, so that the spend and the ledger add up to the same cents
    v_cost := round(_assert_usd('cost_usd', p_cost_usd), 6);
    ch := _budget_chain_arrays(p_agent_id, now());
    IF ch.ids IS NULL THEN
        PERFORM 1 FROM agent_registry a WHERE a.id = p_agent_id;
        RAISE EXCEPTION USING ERRCODE = 'P0002',
            MESSAGE = CASE WHEN FOUND THEN format('agent %s has no budget', p_agent_id)
                           ELSE format('unknown agent %s', p_agent_id) END;
    END IF;
    BEGIN
        -- the ledger row first and the hot budget rows last, so that they stay locked only until commit;
        -- a refusal rolls this block back (the ledger row included)
        INSERT INTO llm_cost_log (idempotency_key, agent_id, provider, model, cost_usd, cost_source, charged_at, metadata)
        VALUES ('check:' || gen_random_uuid()::text, p_agent_id, 'unspecified', 'unspecified', v_cost, 'client',
                now(), '{"api": "check_and_record_budget"}'::jsonb)
        RETURNING id INTO v_ledger;
        v := _car_apply(p_agent_id, ch.ids, ch.periods, ch.caps, ch.limits, ch.thresholds, v_cost,
                        p_expected_version, p_nowait);
        IF NOT v.ok THEN
            RAISE EXCEPTION USING ERRCODE = 'SLB01', MESSAGE = 'agent level refused',
                DETAIL = format('remaining_usd=%s version=%s', v.remaining_usd, v.version);
        END IF;
    EXCEPTION WHEN SQLSTATE 'SLB01' THEN
        v_ledger := NULL;
        SELECT false AS ok,
               min(greatest(0, s.cap_usd - s.spent_usd - s.reserved_usd)) AS remaining_usd,
               max(s.version) FILTER (WHERE s.budget_id = ch.ids[cardinality(ch.ids)]) AS version
          INTO v
          FROM unnest(ch.ids, ch.periods) u(budget_id, period_start)
          JOIN budget_spend s ON s.budget_id = u.budget_id AND s.period_start = u.period_start;
    END;
    allowed := v.ok; remaining_usd := v.remaining_usd; version := v.version; ledger_id := v_ledger;
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
