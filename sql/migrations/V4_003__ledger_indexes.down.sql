-- sigledger:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS sigledger.llm_cost_log_reservation_id_key;
DROP INDEX CONCURRENTLY IF EXISTS sigledger.llm_cost_log_agent_charged_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS sigledger.llm_cost_log_created_at_idx;
