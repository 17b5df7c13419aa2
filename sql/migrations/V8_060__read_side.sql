-- V8_060: the read side's tables (issue 15).
-- - cost_quarantine gains its resolution: an admin re-submits a quarantined row (fixed) through
--   quarantine_resubmit(); the row stays, marked with when, by whom, the payload that was recorded and the
--   ledger row it became. Nullable columns without a default: no rewrite; the consistency CHECK and the FK are
--   added NOT VALID here (no scan under this file's lock) and validated by V8_061.
-- - alert_sink / alert_delivery: `sigledger budget watch --webhook` remembers, per sink, which budget alerts
--   it has delivered, so a restarted watcher delivers what is pending (at least once) and nothing twice that
--   it knows it delivered.
ALTER TABLE sigledger.cost_quarantine
    ADD COLUMN resolved_at         timestamptz,
    ADD COLUMN resolved_by         text,
    ADD COLUMN resolved_payload    jsonb,
    ADD COLUMN resolved_ledger_id  bigint;
ALTER TABLE sigledger.cost_quarantine
    ADD CONSTRAINT cost_quarantine_resolved_consistent CHECK (
        (resolved_at IS NULL) = (resolved_ledger_id IS NULL)
        AND (resolved_at IS NULL) = (resolved_payload IS NULL)
        AND (resolved_at IS NULL) = (resolved_by IS NULL)) NOT VALID;
-- resolved_ledger_id and alert_delivery.alert_id carry no foreign key: the rows they name are never deleted
-- (the ledger is append-only, alerts are kept), the functions that write them take the ids from the rows
-- themselves, and a foreign key would make every TRUNCATE of the ledger's key registry or of budget_alert (test
-- teardowns, a DBA's cleanup) name these tables too.
COMMENT ON COLUMN sigledger.cost_quarantine.resolved_payload IS
    'The (fixed) row that quarantine_resubmit() recorded; payload keeps what was first received.';

CREATE TABLE sigledger.alert_sink (
    name            text        NOT NULL,
    -- alerts with a larger id are this sink's business: a new sink starts from now, --replay from 0
    start_after_id  bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_sink_pkey PRIMARY KEY (name),
    CONSTRAINT alert_sink_name_length CHECK (length(btrim(name)) BETWEEN 1 AND 500),
    CONSTRAINT alert_sink_start_after_id_range CHECK (start_after_id >= 0)
);
COMMENT ON TABLE sigledger.alert_sink IS
    'Destinations of budget alerts (a webhook watcher each); what each has delivered is in alert_delivery.';

CREATE TABLE sigledger.alert_delivery (
    sink          text        NOT NULL,
    alert_id      bigint      NOT NULL,
    delivered_at  timestamptz NOT NULL DEFAULT now(),
    attempts      bigint      NOT NULL,
    -- backstop: one delivery record per sink and alert, however many watchers record it at once
    CONSTRAINT alert_delivery_pkey PRIMARY KEY (sink, alert_id),
    CONSTRAINT alert_delivery_sink_fkey FOREIGN KEY (sink) REFERENCES sigledger.alert_sink (name) ON DELETE CASCADE,
    CONSTRAINT alert_delivery_attempts_range CHECK (attempts BETWEEN 1 AND 1000000)
);
COMMENT ON TABLE sigledger.alert_delivery IS 'Budget alerts delivered (acknowledged by the receiver) per sink.';

REVOKE ALL ON sigledger.alert_sink, sigledger.alert_delivery FROM PUBLIC;
