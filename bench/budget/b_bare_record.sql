-- (b) bare SQL: the same writes as check_and_record_budget with no check (spend row + ledger row)
\set n random(1, :agents)
WITH l AS (
    INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, provider, model, cost_usd, charged_at)
    SELECT 'bare:' || gen_random_uuid(), a.id, 'unspecified', 'unspecified', 0.01, now() FROM bench.agents a WHERE a.n = :n
)
UPDATE sigledger.budget_spend SET spent_usd = spent_usd + 0.01
 WHERE budget_id = (SELECT budget_id FROM bench.agents WHERE n = :n) AND period_start = timestamptz '1970-01-01 00:00:00+00';
