-- Benchmark fixtures (schema bench, outside sigledger): the agents, and the seed's design reproduced for
-- comparison (report 1.2.4/1.2.5: FOR UPDATE NOWAIT + expected version, check now and record later).
DROP SCHEMA IF EXISTS bench CASCADE;
CREATE SCHEMA bench;

-- n -> sigledger agent and budget (n = 1 is the hot agent)
CREATE TABLE bench.agents (n integer PRIMARY KEY, id uuid NOT NULL, budget_id bigint NOT NULL);
-- the hot agents of the sliced runs: one per slice count, its budget split over that many (set_budget_slices)
CREATE TABLE bench.sliced (id uuid PRIMARY KEY, budget_id bigint NOT NULL, slices integer NOT NULL UNIQUE);

-- the seed's agent row and ledger
CREATE TABLE bench.seed_agent (
    id integer PRIMARY KEY,
    budget_limit numeric NOT NULL,
    current_cost numeric NOT NULL DEFAULT 0,
    version integer NOT NULL DEFAULT 0
) WITH (fillfactor = 50);
CREATE TABLE bench.seed_ledger (id bigserial PRIMARY KEY, agent_id integer NOT NULL, cost_usd numeric NOT NULL,
                                created_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION bench.seed_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.version := OLD.version + 1; RETURN NEW; END $$;
CREATE TRIGGER seed_bump_version BEFORE UPDATE ON bench.seed_agent FOR EACH ROW EXECUTE FUNCTION bench.seed_bump_version();

-- the seed's check_and_record_budget, as its report shows it: lock NOWAIT, compare versions, return allowed
CREATE FUNCTION bench.seed_check_and_record_budget(p_agent_id integer, p_cost_usd numeric, p_expected_version integer)
RETURNS TABLE (allowed boolean, remaining numeric, version integer) LANGUAGE plpgsql AS $$
DECLARE v_limit numeric; v_cost numeric; v_version integer; v_remaining numeric;
BEGIN
    SELECT a.budget_limit, a.current_cost, a.version INTO v_limit, v_cost, v_version
      FROM bench.seed_agent a WHERE a.id = p_agent_id FOR UPDATE NOWAIT;
    IF v_version <> p_expected_version THEN
        RAISE EXCEPTION 'Version mismatch';
    END IF;
    v_remaining := v_limit - (v_cost + p_cost_usd);
    RETURN QUERY SELECT v_remaining > -0.0, v_remaining, v_version;  -- grace 0: a hard budget
END $$;

-- pgbench aborts a client on any error, so the failed attempts of the seed's design (55P03, version
-- mismatch) are counted here: 1 allowed, 0 denied, -1 failed attempt (the seed's caller would retry)
CREATE FUNCTION bench.seed_attempt(p_agent_id integer, p_cost_usd numeric, p_expected_version integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE v_allowed boolean;
BEGIN
    SELECT s.allowed INTO v_allowed FROM bench.seed_check_and_record_budget(p_agent_id, p_cost_usd, p_expected_version) s;
    RETURN CASE WHEN v_allowed THEN 1 ELSE 0 END;
EXCEPTION WHEN lock_not_available OR raise_exception THEN
    RETURN -1;
END $$;

-- sigledger's reserve for the overspend runs, where the budget runs out: SLB01 -> 0 instead of an error
CREATE FUNCTION bench.try_reserve(p_agent_id uuid, p_estimate numeric) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT reservation_id FROM sigledger.reserve_budget(p_agent_id, p_estimate, interval '10 minutes'));
EXCEPTION WHEN SQLSTATE 'SLB01' THEN
    RETURN 0;
END $$;

-- The floor of any PL/pgSQL design (bench/budget/README.md, Sixth pass): the bare writes of b_bare_*.sql inside
-- functions shaped like sigledger's (PL/pgSQL, SECURITY DEFINER, the same SET clauses, result columns and
-- arguments), with nothing else: no validation, no idempotency key test, no guard, no alert boundary, no price.
-- The budget found from the agent (the bare scripts read it from bench.agents), the reservation's agent and
-- budget from its row, as the functions must.
CREATE FUNCTION bench.floor_reserve(p_agent_id uuid, p_estimate_usd numeric, p_ttl interval DEFAULT interval '10 minutes',
                                    p_idempotency_key text DEFAULT NULL)
RETURNS TABLE (reservation_id bigint, remaining_usd numeric, expires_at timestamptz, fail_policy text, replayed boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = sigledger, pg_temp SET lock_timeout = '5s' AS $$
BEGIN
    WITH b AS (SELECT x.id FROM budget x WHERE x.agent_id = p_agent_id), r AS (
        INSERT INTO budget_reservation (idempotency_key, agent_id, estimate_usd, budget_ids, period_starts, expires_at)
        SELECT 'auto:' || gen_random_uuid(), p_agent_id, p_estimate_usd, ARRAY[b.id],
               ARRAY[timestamptz '1970-01-01 00:00:00+00'], now() + p_ttl
          FROM b
        RETURNING id
    ), s AS (
        UPDATE budget_spend SET reserved_usd = reserved_usd + p_estimate_usd
         WHERE budget_id = (SELECT b.id FROM b) AND period_start = timestamptz '1970-01-01 00:00:00+00'
    )
    SELECT r.id INTO reservation_id FROM r;
    RETURN NEXT;
END $$;
CREATE FUNCTION bench.floor_settle(p_reservation_id bigint, p_actual_usd numeric DEFAULT NULL, p_input_tokens bigint DEFAULT 0,
                                   p_output_tokens bigint DEFAULT 0, p_model text DEFAULT 'unspecified',
                                   p_provider text DEFAULT 'unspecified', p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS TABLE (ledger_id bigint, reservation_id bigint, estimate_usd numeric, actual_usd numeric, overrun_usd numeric,
               replayed boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = sigledger, pg_temp SET lock_timeout = '5s' AS $$
BEGIN
    WITH r AS (SELECT br.agent_id, br.budget_ids FROM budget_reservation br WHERE br.id = p_reservation_id), l AS (
        INSERT INTO llm_cost_log (idempotency_key, agent_id, provider, model, tokens_input, tokens_output, cost_usd,
                                  reservation_id, charged_at)
        SELECT 'reservation:' || p_reservation_id, r.agent_id, p_provider, p_model, p_input_tokens, p_output_tokens,
               p_actual_usd, p_reservation_id, now()
          FROM r
        RETURNING id
    ), s AS (
        UPDATE budget_spend SET spent_usd = spent_usd + p_actual_usd, reserved_usd = reserved_usd - p_actual_usd
         WHERE budget_id = (SELECT r.budget_ids[1] FROM r) AND period_start = timestamptz '1970-01-01 00:00:00+00'
    )
    UPDATE budget_reservation br
       SET state = 'settled', closed_at = now(), actual_usd = p_actual_usd, overrun_usd = 0, ledger_id = (SELECT l.id FROM l)
     WHERE br.id = p_reservation_id;
    RETURN NEXT;
END $$;
CREATE FUNCTION bench.floor_record(p_agent_id uuid, p_cost_usd numeric, p_expected_version bigint DEFAULT NULL,
                                   p_nowait boolean DEFAULT false)
RETURNS TABLE (allowed boolean, remaining_usd numeric, version bigint, ledger_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = sigledger, pg_temp SET lock_timeout = '5s' AS $$
BEGIN
    WITH l AS (
        INSERT INTO llm_cost_log (idempotency_key, agent_id, provider, model, cost_usd, charged_at)
        VALUES ('bare:' || gen_random_uuid(), p_agent_id, 'unspecified', 'unspecified', p_cost_usd, now())
    )
    UPDATE budget_spend SET spent_usd = spent_usd + p_cost_usd
     WHERE budget_id = (SELECT x.id FROM budget x WHERE x.agent_id = p_agent_id)
       AND period_start = timestamptz '1970-01-01 00:00:00+00';
    allowed := true;
    RETURN NEXT;
END $$;
