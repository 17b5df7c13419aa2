-- sigledger:no-transaction
-- sigledger:supersedes ab7e07204a70c3f4df92c1783e04c7327a9cd682ff18d17100dbbd1f28a4a0ab
-- V4_001: the append-only LLM cost ledger (baseline llm_cost_log, extended), dated model price table, quarantine for rejected batch rows.
-- Validation is declarative first: every CHECK is named <table>_<column>_<rule> so that harness.errors and
-- the tests can pin it. numeric accepts 'NaN' and 'NaN' >= 0 is true; NaN sorts above every number, so
-- the upper bound (x <= N) is what rejects it, and the explicit x <> 'NaN' keeps that visible to a reader.
-- The bounded numeric(p,s) types cannot hold +/-Infinity at all (22003 on cast).

-- Online (rewritten since its first release, which set charged_at with one UPDATE of the whole ledger under
-- the ACCESS EXCLUSIVE lock of ADD COLUMN: 15 s of blocked inserts on a million rows). Now each step below is
-- its own short transaction touching one existing table (no lock held while waiting for another, so no
-- deadlock with the application), and the backfill runs in batches outside any table lock:
--   1. new tables; 2. the new ledger columns, charged_at NULL for existing rows (catalog only);
--   3. charged_at = created_at in batches of 10,000 rows, each committed; 4. NOT NULL proven by a CHECK added
--   NOT VALID and validated (a scan under SHARE UPDATE EXCLUSIVE: inserts continue), then SET NOT NULL (no
--   scan: the validated CHECK proves it) and the CHECK dropped; 5. the append-only triggers (after the
--   backfill, which is an UPDATE) and the constraints V4_003 validates.
-- The resulting schema is the first release's (tests/migrate/test_superseded.py compares them), so a database
-- that ran the first content is not drifted (header above).

BEGIN;
CREATE TABLE sigledger.model_price (
    provider             text          NOT NULL,
    model                text          NOT NULL,
    valid_from           timestamptz   NOT NULL,
    input_usd_per_mtok   numeric(18,9) NOT NULL,
    output_usd_per_mtok  numeric(18,9) NOT NULL,
    created_at           timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT model_price_pkey PRIMARY KEY (provider, model, valid_from),
    CONSTRAINT model_price_provider_not_empty CHECK (length(btrim(provider)) BETWEEN 1 AND 200),
    CONSTRAINT model_price_model_not_empty CHECK (length(btrim(model)) BETWEEN 1 AND 200),
    CONSTRAINT model_price_input_usd_per_mtok_range
        CHECK (input_usd_per_mtok <> 'NaN' AND input_usd_per_mtok >= 0 AND input_usd_per_mtok <= 100000),
    CONSTRAINT model_price_output_usd_per_mtok_range
        CHECK (output_usd_per_mtok <> 'NaN' AND output_usd_per_mtok >= 0 AND output_usd_per_mtok <= 100000),
    CONSTRAINT model_price_valid_from_range
        CHECK (valid_from >= '2000-01-01 00:00:00+00' AND valid_from < '2200-01-01 00:00:00+00')
);
COMMENT ON TABLE sigledger.model_price IS
    'Dated USD prices per million tokens; the price of a call is the row with the latest valid_from <= the call time.';
REVOKE ALL ON sigledger.model_price FROM PUBLIC;
COMMIT;

-- The ledger is the baseline's llm_cost_log (the seed's table), extended: the cost the price table gives,
-- where the charged cost came from, the reservation it settles, the instant whose budget period it charged,
-- and the constraints the baseline lacked (a future bound on created_at, token upper bounds).
-- Constant defaults and nullable columns: catalog-only changes, no rewrite.
BEGIN;
ALTER TABLE sigledger.llm_cost_log
    ADD COLUMN priced_usd      numeric(14,6),
    ADD COLUMN cost_source     text NOT NULL DEFAULT 'client',
    ADD COLUMN reservation_id  bigint,
    -- the instant whose budget period was charged: the reservation's creation for settled reservations,
    -- created_at otherwise. reconcile_budgets recomputes per-period spend from it. Existing rows get their
    -- created_at below; rows inserted meanwhile get now() (their created_at, give or take the statement).
    ADD COLUMN charged_at      timestamptz,
    ADD COLUMN recorded_at     timestamptz NOT NULL DEFAULT now();
ALTER TABLE sigledger.llm_cost_log ALTER COLUMN charged_at SET DEFAULT now();
COMMIT;

-- Batches of 10,000 rows in id order, each committed: row locks on one batch at a time, no table lock beyond
-- ROW EXCLUSIVE (inserts go on). Idempotent: a re-run (after a failure) continues with the rows still NULL.
DO $backfill$
DECLARE
    v_last bigint := 0;
    v_next bigint;
BEGIN
    LOOP
        SELECT max(id) INTO v_next
          FROM (SELECT id FROM sigledger.llm_cost_log WHERE id > v_last ORDER BY id LIMIT 10000) b;
        EXIT WHEN v_next IS NULL;
        UPDATE sigledger.llm_cost_log SET charged_at = created_at
         WHERE id > v_last AND id <= v_next AND charged_at IS NULL;
        v_last := v_next;
        COMMIT;
    END LOOP;
END
$backfill$;

-- squawk-ignore adding-not-nullable-field
ALTER TABLE sigledger.llm_cost_log
    ADD CONSTRAINT llm_cost_log_charged_at_not_null CHECK (charged_at IS NOT NULL) NOT VALID;
ALTER TABLE sigledger.llm_cost_log VALIDATE CONSTRAINT llm_cost_log_charged_at_not_null;
BEGIN;
-- no scan: the validated CHECK above proves it (PostgreSQL 12+)
-- squawk-ignore adding-not-nullable-field
ALTER TABLE sigledger.llm_cost_log ALTER COLUMN charged_at SET NOT NULL;
-- (its work is done: NOT NULL holds the guarantee now)
-- squawk-ignore ban-drop-constraint
ALTER TABLE sigledger.llm_cost_log DROP CONSTRAINT llm_cost_log_charged_at_not_null;
COMMIT;

-- NOT VALID here (no scan under a lock; new rows are checked at once), validated by V4_003.
BEGIN;
ALTER TABLE sigledger.llm_cost_log
    ADD CONSTRAINT llm_cost_log_priced_usd_range
        CHECK (priced_usd IS NULL OR (priced_usd <> 'NaN' AND priced_usd >= 0 AND priced_usd <= 100000000)) NOT VALID,
    ADD CONSTRAINT llm_cost_log_cost_source_valid CHECK (cost_source IN ('client', 'price_table')) NOT VALID,
    ADD CONSTRAINT llm_cost_log_tokens_range CHECK (tokens_input <= 1000000000000 AND tokens_output <= 1000000000000) NOT VALID,
    -- at most one day of clock skew into the future. now() in a CHECK is not immutable, but the bound only
    -- loosens as time passes, so a dump restored later still satisfies it.
    ADD CONSTRAINT llm_cost_log_created_at_range CHECK (created_at <= now() + interval '1 day') NOT VALID,
    ADD CONSTRAINT llm_cost_log_charged_at_range
        CHECK (charged_at > '2020-01-01' AND charged_at <= now() + interval '1 day') NOT VALID;
COMMENT ON TABLE sigledger.llm_cost_log IS
    'Append-only ledger of LLM call costs. No UPDATE/DELETE/TRUNCATE: no privilege is granted and a trigger refuses them.';
COMMENT ON COLUMN sigledger.llm_cost_log.priced_usd IS
    'Cost computed from model_price at created_at (NULL: no price); see view cost_price_disagreement.';

-- The ledger's indexes are built CONCURRENTLY by V4_003 (llm_cost_log may already be large).

CREATE FUNCTION sigledger._llm_cost_log_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
-- Refuses UPDATE, DELETE and TRUNCATE on the ledger, whoever the caller is (the owner included).
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = '42501',
        MESSAGE = format('llm_cost_log is append-only: %s refused', TG_OP),
        HINT = 'Record a correcting entry instead; costs are never edited or removed.';
END;
$$;

CREATE TRIGGER llm_cost_log_append_only_row
    BEFORE UPDATE OR DELETE ON sigledger.llm_cost_log
    FOR EACH ROW EXECUTE FUNCTION sigledger._llm_cost_log_append_only();
CREATE TRIGGER llm_cost_log_append_only_truncate
    BEFORE TRUNCATE ON sigledger.llm_cost_log
    FOR EACH STATEMENT EXECUTE FUNCTION sigledger._llm_cost_log_append_only();
COMMIT;

BEGIN;
CREATE TABLE sigledger.cost_quarantine (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    received_at      timestamptz NOT NULL DEFAULT now(),
    idempotency_key  text,
    payload          jsonb       NOT NULL,
    sqlstate         text        NOT NULL,
    reason           text        NOT NULL,
    CONSTRAINT cost_quarantine_pkey PRIMARY KEY (id),
    CONSTRAINT cost_quarantine_sqlstate_format CHECK (sqlstate ~ '^[0-9A-Z]{5}$'),
    CONSTRAINT cost_quarantine_reason_not_empty CHECK (length(reason) > 0)
);
COMMENT ON TABLE sigledger.cost_quarantine IS
    'Rows of record_costs batches that failed validation, with the SQLSTATE and reason; nothing is dropped silently.';
-- a table created in this transaction: a plain CREATE INDEX blocks nobody
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX cost_quarantine_received_at_idx ON sigledger.cost_quarantine (received_at);
REVOKE ALL ON sigledger.llm_cost_log, sigledger.cost_quarantine FROM PUBLIC;
COMMIT;
