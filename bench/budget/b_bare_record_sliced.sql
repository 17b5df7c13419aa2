-- (b) bare SQL: the same writes as check_and_record_budget on the hot agent's budget split over :slices slices, with
-- no check (a random slice's spend row + the ledger row): the ceiling of any sliced design that writes a ledger
-- row per cost, to set beside the raw single-row UPDATE (which writes no ledger row)
\set s random(0, :slices - 1)
WITH u AS (
    UPDATE sigledger.budget_spend SET spent_usd = spent_usd + 0.01
     WHERE budget_id = (SELECT budget_id FROM bench.sliced WHERE slices = :slices) AND period_start = timestamptz '1970-01-01 00:00:00+00'
       AND slice = :s
    RETURNING budget_id
)
INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, provider, model, cost_usd, charged_at)
SELECT 'bare:' || gen_random_uuid(), (SELECT id FROM bench.sliced WHERE slices = :slices), 'unspecified', 'unspecified', 0.01, now() FROM u;
