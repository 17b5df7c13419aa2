-- Raises when V8_060 is not in place; returns the quarantine rows whose resolution is inconsistent.
SELECT 'sigledger.alert_sink'::regclass, 'sigledger.alert_delivery'::regclass WHERE false;
SELECT id AS problem FROM sigledger.cost_quarantine
 WHERE NOT ((resolved_at IS NULL) = (resolved_ledger_id IS NULL) AND (resolved_at IS NULL) = (resolved_payload IS NULL));
