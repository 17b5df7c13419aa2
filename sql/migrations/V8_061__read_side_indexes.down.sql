-- sigledger:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS sigledger.cost_quarantine_unresolved_idx;
DROP INDEX CONCURRENTLY IF EXISTS sigledger.budget_reservation_overrun_closed_idx;
