-- (c) the seed's design: read the version, check with FOR UPDATE NOWAIT + expected version, and (if allowed)
-- record the cost after the LLM call in a separate transaction
\set n random(1, :agents)
SELECT version AS v FROM bench.seed_agent WHERE id = :n \gset
SELECT bench.seed_attempt(:n, 0.01, :v) AS ok \gset
\if :ok = 1
BEGIN;
UPDATE bench.seed_agent SET current_cost = current_cost + 0.01 WHERE id = :n;
INSERT INTO bench.seed_ledger (agent_id, cost_usd) VALUES (:n, 0.01);
COMMIT;
\endif
