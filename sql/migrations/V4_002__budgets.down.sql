-- Rolls back V4_002: the budget API (repeatable files 120-150) and the budget tables. Destructive by design:
-- budgets, spend, reservations and alerts are dropped (the ledger keeps every cost).
DROP FUNCTION IF EXISTS sigledger.budget_alerts_after, sigledger.reconcile_budgets, sigledger._reconcile_expected,
    sigledger.budget_status, sigledger.check_and_record_budget, sigledger._car_apply, sigledger.expire_reservations,
    sigledger.release_budget, sigledger.settle_budget, sigledger.reserve_budget, sigledger.update_budget,
    sigledger.create_group_budget, sigledger.set_budget, sigledger.create_agent, sigledger._budget_apply_settings,
    sigledger.record_costs, sigledger.record_cost, sigledger._spend_release, sigledger._spend_charge,
    sigledger._spend_alerts, sigledger._spend_hold, sigledger._spend_ensure, sigledger._budget_chain;
ALTER TABLE sigledger.llm_cost_log DROP CONSTRAINT llm_cost_log_reservation_id_fkey;
DROP TABLE sigledger.budget_alert;
DROP TABLE sigledger.budget_reservation;
DROP TABLE sigledger.budget_spend;
DROP FUNCTION sigledger._budget_spend_bump_version();
DROP TABLE sigledger.budget;
DROP FUNCTION sigledger._period_start(text, timestamptz);
DROP FUNCTION sigledger._valid_alert_thresholds(numeric[]);
COMMENT ON COLUMN sigledger.agent_registry.budget_limit_usd IS NULL;
COMMENT ON COLUMN sigledger.agent_registry.current_cost_usd IS NULL;
