-- sigledger:no-transaction
-- V4_003: the ledger's indexes, built CONCURRENTLY (llm_cost_log may be large on a database that ran the seed),
-- and validation of the constraints V4_001/V4_002 added NOT VALID. Each statement runs on its own; the runner
-- resumes after a failure and rebuilds an INVALID index left by a failed concurrent build.
CREATE INDEX CONCURRENTLY llm_cost_log_created_at_idx ON sigledger.llm_cost_log (created_at);
CREATE INDEX CONCURRENTLY llm_cost_log_agent_charged_at_idx ON sigledger.llm_cost_log (agent_id, charged_at);
-- backstop: a reservation settles into at most one ledger row, even if a settle call were retried wrongly
CREATE UNIQUE INDEX CONCURRENTLY llm_cost_log_reservation_id_key ON sigledger.llm_cost_log (reservation_id)
    WHERE reservation_id IS NOT NULL;
ALTER TABLE sigledger.llm_cost_log VALIDATE CONSTRAINT llm_cost_log_priced_usd_range;
ALTER TABLE sigledger.llm_cost_log VALIDATE CONSTRAINT llm_cost_log_cost_source_valid;
ALTER TABLE sigledger.llm_cost_log VALIDATE CONSTRAINT llm_cost_log_tokens_range;
ALTER TABLE sigledger.llm_cost_log VALIDATE CONSTRAINT llm_cost_log_created_at_range;
ALTER TABLE sigledger.llm_cost_log VALIDATE CONSTRAINT llm_cost_log_charged_at_range;
ALTER TABLE sigledger.llm_cost_log VALIDATE CONSTRAINT llm_cost_log_reservation_id_fkey;
