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
