-- (b) bare SQL: the same writes as reserve + settle with no checks, each transaction one statement
\set n random(1, :agents)
WITH r AS (
    INSERT INTO sigledger.budget_reservation (idempotency_key, agent_id, estimate_usd, budget_ids, period_starts, expires_at)
    SELECT 'bare:' || gen_random_uuid(), a.id, 0.01, ARRAY[a.budget_id], ARRAY[timestamptz '1970-01-01 00:00:00+00'],
           now() + interval '10 minutes'
      FROM bench.agents a WHERE a.n = :n
    RETURNING id
), s AS (
    UPDATE sigledger.budget_spend SET reserved_usd = reserved_usd + 0.01
     WHERE budget_id = (SELECT budget_id FROM bench.agents WHERE n = :n) AND period_start = timestamptz '1970-01-01 00:00:00+00'
)
SELECT id AS rid FROM r \gset
WITH l AS (
    INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, provider, model, tokens_input, tokens_output, cost_usd,
                                        reservation_id, charged_at)
    SELECT 'reservation:' || :rid, a.id, 'p', 'm', 10, 5, 0.01, :rid, now() FROM bench.agents a WHERE a.n = :n
    RETURNING id
), s AS (
    UPDATE sigledger.budget_spend SET spent_usd = spent_usd + 0.01, reserved_usd = reserved_usd - 0.01
     WHERE budget_id = (SELECT budget_id FROM bench.agents WHERE n = :n) AND period_start = timestamptz '1970-01-01 00:00:00+00'
)
UPDATE sigledger.budget_reservation SET state = 'settled', closed_at = now(), actual_usd = 0.01, overrun_usd = 0,
       ledger_id = (SELECT id FROM l)
 WHERE id = :rid;
