-- V4_001: append-only LLM cost ledger, dated model price table, quarantine for rejected batch rows.
-- Validation is declarative first: every CHECK is named <table>_<column>_<rule> so that harness.errors and
-- the tests can pin it. numeric accepts 'NaN' and 'NaN' >= 0 is true; NaN sorts above every number, so
-- the upper bound (x <= N) is what rejects it, and the explicit x <> 'NaN' keeps that visible to a reader.
-- The bounded numeric(p,s) types cannot hold +/-Infinity at all (22003 on cast).

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

CREATE TABLE sigledger.cost_ledger (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    idempotency_key  text           NOT NULL,
    agent_id         uuid           NOT NULL,
    provider         text           NOT NULL,
    model            text           NOT NULL,
    input_tokens     bigint         NOT NULL DEFAULT 0,
    output_tokens    bigint         NOT NULL DEFAULT 0,
    cost_usd         numeric(20,10) NOT NULL,
    -- cost computed from model_price at created_at (NULL when the model has no price); kept next to the
    -- charged cost so that disagreements are visible (see view cost_price_disagreement).
    priced_usd       numeric(20,10),
    cost_source      text           NOT NULL,
    reservation_id   bigint,
    -- the instant whose budget period was charged: the reservation's creation for settled reservations,
    -- created_at otherwise. reconcile_budgets recomputes per-period spend from it.
    charged_at       timestamptz    NOT NULL,
    created_at       timestamptz    NOT NULL DEFAULT now(),
    recorded_at      timestamptz    NOT NULL DEFAULT now(),
    metadata         jsonb          NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT cost_ledger_pkey PRIMARY KEY (id),
    CONSTRAINT cost_ledger_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT cost_ledger_idempotency_key_not_empty CHECK (length(btrim(idempotency_key)) BETWEEN 1 AND 200),
    CONSTRAINT cost_ledger_provider_not_empty CHECK (length(btrim(provider)) BETWEEN 1 AND 200),
    CONSTRAINT cost_ledger_model_not_empty CHECK (length(btrim(model)) BETWEEN 1 AND 200),
    CONSTRAINT cost_ledger_input_tokens_range CHECK (input_tokens >= 0 AND input_tokens <= 1000000000000),
    CONSTRAINT cost_ledger_output_tokens_range CHECK (output_tokens >= 0 AND output_tokens <= 1000000000000),
    CONSTRAINT cost_ledger_cost_usd_range CHECK (cost_usd <> 'NaN' AND cost_usd >= 0 AND cost_usd <= 1000000),
    CONSTRAINT cost_ledger_priced_usd_range
        CHECK (priced_usd IS NULL OR (priced_usd <> 'NaN' AND priced_usd >= 0 AND priced_usd <= 100000000)),
    CONSTRAINT cost_ledger_cost_source_valid CHECK (cost_source IN ('client', 'price_table')),
    -- a sane epoch below, and at most one day of clock skew above. now() in a CHECK is not immutable, but the
    -- bound only loosens as time passes, so a dump restored later still satisfies it.
    CONSTRAINT cost_ledger_created_at_range
        CHECK (created_at >= '2000-01-01 00:00:00+00' AND created_at <= now() + interval '1 day'),
    CONSTRAINT cost_ledger_charged_at_range
        CHECK (charged_at >= '2000-01-01 00:00:00+00' AND charged_at <= now() + interval '1 day'),
    CONSTRAINT cost_ledger_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);
COMMENT ON TABLE sigledger.cost_ledger IS
    'Append-only ledger of LLM call costs. No UPDATE/DELETE/TRUNCATE: no privilege is granted and a trigger refuses them.';

CREATE INDEX cost_ledger_created_at_idx ON sigledger.cost_ledger (created_at);
CREATE INDEX cost_ledger_agent_charged_at_idx ON sigledger.cost_ledger (agent_id, charged_at);
-- backstop: a reservation settles into at most one ledger row, even if a settle call were retried wrongly
CREATE UNIQUE INDEX cost_ledger_reservation_id_key ON sigledger.cost_ledger (reservation_id)
    WHERE reservation_id IS NOT NULL;

CREATE FUNCTION sigledger._cost_ledger_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
-- Refuses UPDATE, DELETE and TRUNCATE on the ledger, whoever the caller is (the owner included).
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = '42501',
        MESSAGE = format('cost_ledger is append-only: %s refused', TG_OP),
        HINT = 'Record a correcting entry instead; costs are never edited or removed.';
END;
$$;

CREATE TRIGGER cost_ledger_append_only_row
    BEFORE UPDATE OR DELETE ON sigledger.cost_ledger
    FOR EACH ROW EXECUTE FUNCTION sigledger._cost_ledger_append_only();
CREATE TRIGGER cost_ledger_append_only_truncate
    BEFORE TRUNCATE ON sigledger.cost_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION sigledger._cost_ledger_append_only();

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
CREATE INDEX cost_quarantine_received_at_idx ON sigledger.cost_quarantine (received_at);

-- Client cost versus price table: the client's figure is charged (it is what the provider billed, including
-- discounts the table does not model); the priced figure is kept beside it and this view lists the rows
-- where they differ by more than 1% and more than $0.000001, for review.
CREATE VIEW sigledger.cost_price_disagreement AS
SELECT id, idempotency_key, agent_id, provider, model, input_tokens, output_tokens,
       cost_usd, priced_usd, cost_usd - priced_usd AS difference_usd, created_at
  FROM sigledger.cost_ledger
 WHERE priced_usd IS NOT NULL
   AND cost_source = 'client'
   AND abs(cost_usd - priced_usd) > greatest(0.000001, 0.01 * priced_usd);
COMMENT ON VIEW sigledger.cost_price_disagreement IS
    'Ledger rows whose client-reported cost differs from the price table by more than 1% (and $0.000001).';

REVOKE ALL ON sigledger.model_price, sigledger.cost_ledger, sigledger.cost_quarantine FROM PUBLIC;
