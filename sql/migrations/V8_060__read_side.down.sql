-- Rolls back V8_060: the functions built on its tables (repeatable files 165, 170), the alert sinks with what
-- they delivered, and the resolution columns of cost_quarantine (the quarantined rows themselves stay).
DROP FUNCTION IF EXISTS sigledger.quarantine_list, sigledger.quarantine_resubmit, sigledger.alert_sink_open,
    sigledger.alert_sink_pending, sigledger.alert_sink_delivered, sigledger.alert_sink_status;
DROP TABLE sigledger.alert_delivery;
DROP TABLE sigledger.alert_sink;
ALTER TABLE sigledger.cost_quarantine
    DROP CONSTRAINT IF EXISTS cost_quarantine_resolved_consistent,
    DROP COLUMN resolved_at,
    DROP COLUMN resolved_by,
    DROP COLUMN resolved_payload,
    DROP COLUMN resolved_ledger_id;
