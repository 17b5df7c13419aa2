-- sigledger:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS sigledger.budget_reservation_agent_overrun_idx;
