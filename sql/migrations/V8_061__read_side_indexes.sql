-- sigledger:no-transaction
-- V8_061: what the read API needs on big tables, built CONCURRENTLY (budget_reservation holds a row per call),
-- and validation of the constraint V8_060 added NOT VALID (SHARE UPDATE EXCLUSIVE: writes go on).
-- - overruns over a time range: a partial index that only settlements above their estimate enter (the settle
--   UPDATE is not HOT anyway: state is in the predicate of budget_reservation_open_expires_idx);
-- - the unresolved quarantine (its size is a metric read at every scrape).
CREATE INDEX CONCURRENTLY budget_reservation_overrun_closed_idx ON sigledger.budget_reservation (closed_at)
    WHERE overrun_usd > 0;
CREATE INDEX CONCURRENTLY cost_quarantine_unresolved_idx ON sigledger.cost_quarantine (id)
    WHERE resolved_at IS NULL;
ALTER TABLE sigledger.cost_quarantine VALIDATE CONSTRAINT cost_quarantine_resolved_consistent;
