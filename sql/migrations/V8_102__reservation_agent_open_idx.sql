-- sigledger:no-transaction
-- V8_102: an agent's open reservations by the agent, built CONCURRENTLY (budget_reservation holds a row per
-- call; SHARE UPDATE EXCLUSIVE: reserves and settlements go on).
-- budget_status (its open_reservations count) and open_reservations(agent) read `agent_id = $1 AND state =
-- 'open'`. The two indexes that could answer them: budget_reservation_open_expires_idx (every agent's open
-- reservations, agent_id a filter: O(open reservations of all agents) per call, which the planner takes when
-- the statistics were taken at a quiet moment and show it nearly empty) and budget_reservation_agent_idx (the
-- agent's whole history, state a filter). This one holds the agent's open reservations only, in expiry order
-- (open_reservations' ORDER BY expires_at ... LIMIT stops early). budget_reservation_agent_idx stays: the
-- foreign key to agent_registry (a deleted or re-keyed agent) and any read of an agent's whole history.
-- Cost on the reserve path: one more index entry per reservation (the settling UPDATE is not HOT anyway and
-- a closed row enters neither partial index); bench/budget/README.md, fifth pass, has the measured A/B.
CREATE INDEX CONCURRENTLY budget_reservation_agent_open_idx ON sigledger.budget_reservation (agent_id, expires_at)
    WHERE state = 'open';
