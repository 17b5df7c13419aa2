-- Rolls back V4_001: the ledger functions (repeatable files 100-110), the price table, the quarantine, and the
-- ledger's added columns and constraints (llm_cost_log keeps its rows and its baseline shape).
DROP FUNCTION IF EXISTS sigledger.cost_trends, sigledger.add_model_price, sigledger._cost_insert,
    sigledger._cost_validate, sigledger._price, sigledger._assert_timestamp, sigledger._assert_tokens,
    sigledger._assert_text, sigledger._assert_usd;
DROP TRIGGER llm_cost_log_append_only_row ON sigledger.llm_cost_log;
DROP TRIGGER llm_cost_log_append_only_truncate ON sigledger.llm_cost_log;
DROP FUNCTION sigledger._llm_cost_log_append_only();
DROP TABLE sigledger.cost_quarantine;
DROP TABLE sigledger.model_price;
ALTER TABLE sigledger.llm_cost_log
    DROP CONSTRAINT llm_cost_log_priced_usd_range,
    DROP CONSTRAINT llm_cost_log_cost_source_valid,
    DROP CONSTRAINT llm_cost_log_tokens_range,
    DROP CONSTRAINT llm_cost_log_created_at_range,
    DROP CONSTRAINT llm_cost_log_charged_at_range,
    DROP COLUMN priced_usd,
    DROP COLUMN cost_source,
    DROP COLUMN reservation_id,
    DROP COLUMN charged_at,
    DROP COLUMN recorded_at;
COMMENT ON TABLE sigledger.llm_cost_log IS 'Append-only ledger of LLM call costs.';
