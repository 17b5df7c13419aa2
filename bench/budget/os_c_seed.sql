-- overspend run, (c) the seed's check now, record after the LLM call (5 ms), on a hard $1.00 budget
SELECT version AS v FROM bench.seed_agent WHERE id = :sid \gset
SELECT bench.seed_attempt(:sid, 0.01, :v) AS ok \gset
\if :ok = 1
\sleep 5 ms
BEGIN;
UPDATE bench.seed_agent SET current_cost = current_cost + 0.01 WHERE id = :sid;
INSERT INTO bench.seed_ledger (agent_id, cost_usd) VALUES (:sid, 0.01);
COMMIT;
\endif
