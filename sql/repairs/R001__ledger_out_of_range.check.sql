-- Findings of R001 (read-only; runs on any schema from V3_000 to V4_003).
SELECT 'ledger rows with more than 1e12 tokens or created more than a day ahead (V4_001 refuses them)' AS finding,
       'quarantine' AS action, count(*) AS rows,
       (array_agg(format('id %s, key %s: %s input / %s output tokens, created_at %s', l.id,
                         left(l.idempotency_key, 60), l.tokens_input, l.tokens_output, l.created_at) ORDER BY l.id))[1:3]
           AS examples
  FROM sigledger.llm_cost_log l
 WHERE l.tokens_input > 1000000000000 OR l.tokens_output > 1000000000000 OR l.created_at > now() + interval '1 day';
