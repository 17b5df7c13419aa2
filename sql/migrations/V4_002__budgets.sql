-- sigledger:no-transaction
-- sigledger:supersedes 9cf238a9e6b35a323db26020c6aec392f3c3d8b86361325fd6443e9917b1d6a8
-- V4_002: budgets (agent, optional team and organisation levels), one spend row per budget and period,
-- reservations, alerts.
--
-- Concurrency design (see docs/budgets.md): a budget's spend and open holds live in one budget_spend row
-- per period. Every change is one guarded UPDATE of that row (spent + reserved + x <= cap), taken with a
-- blocking row lock bounded by lock_timeout, one statement per level, levels in the fixed order
-- org -> team -> agent (then budget id, period). The CHECK budget_spend_within_cap is the backstop that
-- holds even if a function were wrong.

-- Online (rewritten since its first release, which did all of this in one transaction: it held SHARE ROW
-- EXCLUSIVE on agent_registry while it waited for llm_cost_log, and an application transaction that inserts a
-- ledger row and then updates its agent waited for it the other way round: deadlocks, 40P01 for the
-- application or the runner). Each step below is one transaction that locks at most one table the
-- application uses, so it never holds a lock while waiting for another. The resulting schema is the first
-- release's (tests/migrate/test_superseded.py), so a database that ran the first content is not drifted.

BEGIN;
-- Immutable helpers used by CHECK constraints (so they live in the migration, not in a repeatable file).
CREATE FUNCTION sigledger._valid_alert_thresholds(p_thresholds numeric[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = sigledger, pg_temp
AS $$
    -- fractions of the limit, each in (0, 10], finite, no NULLs, at most 10 of them
    SELECT cardinality(p_thresholds) <= 10
       AND NOT EXISTS (SELECT 1 FROM unnest(p_thresholds) t
                        WHERE t IS NULL OR t = 'NaN' OR t <= 0 OR t > 10);
$$;

CREATE FUNCTION sigledger._period_start(p_period text, p_at timestamptz) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = sigledger, pg_temp
AS $$
-- Periods are calendar periods in UTC; weeks start on Monday (ISO). 'none' is one everlasting period.
-- (PL/pgSQL, not SQL: a SQL function with a SET clause is planned again on every call; this one is on the
-- hot path.)
BEGIN
    RETURN CASE p_period
               WHEN 'none'    THEN timestamptz '1970-01-01 00:00:00+00'
               WHEN 'daily'   THEN date_trunc('day',   p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
               WHEN 'weekly'  THEN date_trunc('week',  p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
               WHEN 'monthly' THEN date_trunc('month', p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
           END;
END;
$$;
COMMIT;

-- locks agent_registry (the foreign key), nothing else the application uses
BEGIN;
CREATE TABLE sigledger.budget (
    id                bigint GENERATED ALWAYS AS IDENTITY,
    level             text          NOT NULL,
    name              text          NOT NULL,
    agent_id          uuid,
    parent_id         bigint,
    parent_level      text,
    limit_usd         numeric(20,6) NOT NULL,
    -- 0 = hard limit; 0.10 lets spend reach limit * 1.10
    grace_ratio       numeric(6,4)  NOT NULL DEFAULT 0,
    period            text          NOT NULL DEFAULT 'none',
    fail_policy       text          NOT NULL DEFAULT 'closed',
    alert_thresholds  numeric[]     NOT NULL DEFAULT '{0.8,1.0}',
    created_at        timestamptz   NOT NULL DEFAULT now(),
    updated_at        timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT budget_pkey PRIMARY KEY (id),
    CONSTRAINT budget_id_level_key UNIQUE (id, level),
    CONSTRAINT budget_level_name_key UNIQUE (level, name),
    CONSTRAINT budget_agent_id_key UNIQUE (agent_id),
    CONSTRAINT budget_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES sigledger.agent_registry (id),
    -- the parent's level travels with the reference, so the hierarchy rules below are declarative
    CONSTRAINT budget_parent_fkey FOREIGN KEY (parent_id, parent_level) REFERENCES sigledger.budget (id, level),
    CONSTRAINT budget_level_valid CHECK (level IN ('org', 'team', 'agent')),
    CONSTRAINT budget_agent_id_level CHECK ((level = 'agent') = (agent_id IS NOT NULL)),
    CONSTRAINT budget_parent_level_valid CHECK (
        (parent_id IS NULL AND parent_level IS NULL)
        OR (level = 'agent' AND parent_level IN ('team', 'org'))
        OR (level = 'team' AND parent_level = 'org')),
    CONSTRAINT budget_name_not_empty CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT budget_limit_usd_range CHECK (limit_usd <> 'NaN' AND limit_usd >= 0 AND limit_usd <= 1000000000),
    CONSTRAINT budget_grace_ratio_range CHECK (grace_ratio <> 'NaN' AND grace_ratio >= 0 AND grace_ratio <= 1),
    CONSTRAINT budget_period_valid CHECK (period IN ('none', 'daily', 'weekly', 'monthly')),
    CONSTRAINT budget_fail_policy_valid CHECK (fail_policy IN ('open', 'closed')),
    CONSTRAINT budget_alert_thresholds_valid CHECK (sigledger._valid_alert_thresholds(alert_thresholds))
);
COMMENT ON TABLE sigledger.budget IS 'Budget settings per agent, team or organisation (private; use the budget API).';
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX budget_parent_id_idx ON sigledger.budget (parent_id);
COMMIT;

BEGIN;
CREATE TABLE sigledger.budget_spend (
    budget_id     bigint         NOT NULL,
    period_start  timestamptz    NOT NULL,
    -- limit * (1 + grace) copied here so that the backstop CHECK can see it in the same row
    cap_usd       numeric(22,10) NOT NULL,
    spent_usd     numeric(22,10) NOT NULL DEFAULT 0,
    reserved_usd  numeric(22,10) NOT NULL DEFAULT 0,
    -- money admitted above the cap without a reservation check: settlements above their estimate,
    -- costs recorded after the fact (fail-open during an outage, direct record_cost), a limit lowered
    -- below the spend. It only grows; it is what the backstop tolerates above the cap.
    excess_usd    numeric(22,10) NOT NULL DEFAULT 0,
    -- incremented by trigger on every update; check_and_record_budget's expected_version compares with it
    version       bigint         NOT NULL DEFAULT 0,
    CONSTRAINT budget_spend_pkey PRIMARY KEY (budget_id, period_start),
    CONSTRAINT budget_spend_budget_id_fkey FOREIGN KEY (budget_id) REFERENCES sigledger.budget (id),
    CONSTRAINT budget_spend_cap_usd_range CHECK (cap_usd <> 'NaN' AND cap_usd >= 0),
    CONSTRAINT budget_spend_spent_usd_range CHECK (spent_usd <> 'NaN' AND spent_usd >= 0),
    CONSTRAINT budget_spend_reserved_usd_range CHECK (reserved_usd <> 'NaN' AND reserved_usd >= 0),
    CONSTRAINT budget_spend_excess_usd_range CHECK (excess_usd <> 'NaN' AND excess_usd >= 0),
    -- the backstop: whatever a function does, settled + held never passes the cap except by recorded excess
    CONSTRAINT budget_spend_within_cap CHECK (spent_usd + reserved_usd <= cap_usd + excess_usd)
) WITH (fillfactor = 50);  -- room for HOT updates of the hot rows
COMMENT ON TABLE sigledger.budget_spend IS 'Spend and open holds per budget and period (private).';

CREATE FUNCTION sigledger._budget_spend_bump_version() RETURNS trigger
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
-- Every change of a spend row gets a new version (the seed's optimistic-lock column, kept for its API).
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;
CREATE TRIGGER budget_spend_bump_version
    BEFORE UPDATE ON sigledger.budget_spend
    FOR EACH ROW EXECUTE FUNCTION sigledger._budget_spend_bump_version();
COMMIT;

-- locks agent_registry (the foreign key), nothing else the application uses
BEGIN;
CREATE TABLE sigledger.budget_reservation (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    idempotency_key  text           NOT NULL,
    agent_id         uuid           NOT NULL,
    estimate_usd     numeric(20,10) NOT NULL,
    -- the (budget, period) rows holding this reservation, in lock order
    budget_ids       bigint[]       NOT NULL,
    period_starts    timestamptz[]  NOT NULL,
    state            text           NOT NULL DEFAULT 'open',
    created_at       timestamptz    NOT NULL DEFAULT now(),
    expires_at       timestamptz    NOT NULL,
    closed_at        timestamptz,
    actual_usd       numeric(20,10),
    overrun_usd      numeric(20,10),
    ledger_id        bigint,
    CONSTRAINT budget_reservation_pkey PRIMARY KEY (id),
    CONSTRAINT budget_reservation_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT budget_reservation_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES sigledger.agent_registry (id),
    CONSTRAINT budget_reservation_idempotency_key_not_empty CHECK (length(btrim(idempotency_key)) BETWEEN 1 AND 200),
    CONSTRAINT budget_reservation_estimate_usd_range
        CHECK (estimate_usd <> 'NaN' AND estimate_usd >= 0 AND estimate_usd <= 1000000),
    CONSTRAINT budget_reservation_levels_match
        CHECK (cardinality(budget_ids) BETWEEN 1 AND 3 AND cardinality(budget_ids) = cardinality(period_starts)),
    CONSTRAINT budget_reservation_state_valid CHECK (state IN ('open', 'settled', 'released', 'expired')),
    CONSTRAINT budget_reservation_expires_at_after_created CHECK (expires_at > created_at),
    CONSTRAINT budget_reservation_closed_at_state CHECK ((state = 'open') = (closed_at IS NULL)),
    CONSTRAINT budget_reservation_settled_fields
        CHECK ((state = 'settled') = (ledger_id IS NOT NULL AND actual_usd IS NOT NULL AND overrun_usd IS NOT NULL)),
    CONSTRAINT budget_reservation_actual_usd_range
        CHECK (actual_usd IS NULL OR (actual_usd <> 'NaN' AND actual_usd >= 0 AND actual_usd <= 1000000))
);
COMMENT ON TABLE sigledger.budget_reservation IS 'Money held before an LLM call until settled, released or expired (private).';
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX budget_reservation_open_expires_idx ON sigledger.budget_reservation (expires_at) WHERE state = 'open';
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX budget_reservation_agent_idx ON sigledger.budget_reservation (agent_id);
COMMIT;

-- locks llm_cost_log (both foreign keys; budget_reservation is new and unused until the functions exist)
BEGIN;
-- a new, empty table: validating this foreign key reads nothing
ALTER TABLE sigledger.budget_reservation
    -- squawk-ignore constraint-missing-not-valid, adding-foreign-key-constraint
    ADD CONSTRAINT budget_reservation_ledger_id_fkey FOREIGN KEY (ledger_id) REFERENCES sigledger.llm_cost_log (id);
ALTER TABLE sigledger.llm_cost_log
    ADD CONSTRAINT llm_cost_log_reservation_id_fkey
    FOREIGN KEY (reservation_id) REFERENCES sigledger.budget_reservation (id) NOT VALID;  -- validated by V4_003
COMMIT;

-- reads agent_registry, locks nothing else the application uses
BEGIN;
-- The seed kept the limit and the spend on agent_registry. Agents that had a limit get a budget (period
-- none, hard limit, fail-closed) whose spend row starts from the seed's current_cost; the two columns are
-- then legacy (no longer read or maintained: the spend lives in budget_spend).
INSERT INTO sigledger.budget (level, name, agent_id, limit_usd)
SELECT 'agent', 'agent:' || a.id::text, a.id, a.budget_limit_usd
  FROM sigledger.agent_registry a
 WHERE a.budget_limit_usd > 0;
INSERT INTO sigledger.budget_spend (budget_id, period_start, cap_usd, spent_usd, excess_usd)
SELECT b.id, timestamptz '1970-01-01 00:00:00+00', b.limit_usd, a.current_cost_usd,
       greatest(0, a.current_cost_usd - b.limit_usd)
  FROM sigledger.budget b JOIN sigledger.agent_registry a ON a.id = b.agent_id;
COMMENT ON COLUMN sigledger.agent_registry.budget_limit_usd IS 'Legacy (seed); superseded by budget.limit_usd since V4_002.';
COMMENT ON COLUMN sigledger.agent_registry.current_cost_usd IS 'Legacy (seed); superseded by budget_spend since V4_002.';
COMMIT;

BEGIN;
CREATE TABLE sigledger.budget_alert (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    budget_id     bigint         NOT NULL,
    period_start  timestamptz    NOT NULL,
    threshold     numeric        NOT NULL,
    limit_usd     numeric(20,6)  NOT NULL,
    spent_usd     numeric(22,10) NOT NULL,
    created_at    timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT budget_alert_pkey PRIMARY KEY (id),
    CONSTRAINT budget_alert_budget_id_fkey FOREIGN KEY (budget_id) REFERENCES sigledger.budget (id),
    -- backstop: one alert per budget, period and threshold, however many sessions cross it together
    CONSTRAINT budget_alert_once_key UNIQUE (budget_id, period_start, threshold)
);
COMMENT ON TABLE sigledger.budget_alert IS 'Threshold crossings, one row per budget/period/threshold; each also NOTIFYs sigledger_budget_alert.';
REVOKE ALL ON sigledger.budget, sigledger.budget_spend, sigledger.budget_reservation, sigledger.budget_alert FROM PUBLIC;
COMMIT;
