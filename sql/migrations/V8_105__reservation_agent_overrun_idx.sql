-- sigledger:no-transaction
-- V8_105: an agent's overruns by the agent and closing time, built CONCURRENTLY (budget_reservation holds a row
-- per call; SHARE UPDATE EXCLUSIVE: reserves and settlements go on).
-- overrun_report of one agent reads `agent_id = $1 AND overrun_usd > 0 AND closed_at in [since, until)`. The
-- indexes that could answer it: budget_reservation_overrun_closed_idx (every agent's overruns by closed_at, the
-- agent a filter: O(overruns of all agents in the range) per call, which the planner takes when the statistics
-- were taken at a quiet moment and show it nearly empty) and budget_reservation_agent_idx (the agent's whole
-- history, the overrun and the range filters). This one holds the overruns only, the agent's in closing order:
-- the call reads the agent's overruns of the range (tests/core/test_index_plans.py).
-- Cost on the write path: an index entry for each settlement above its estimate only (the settling UPDATE
-- changes indexed columns, closed_at and state, so it is not HOT anyway).
CREATE INDEX CONCURRENTLY budget_reservation_agent_overrun_idx ON sigledger.budget_reservation (agent_id, closed_at)
    WHERE overrun_usd > 0;
