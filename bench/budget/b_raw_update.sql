-- (b) the raw single-row UPDATE of the hot agent's spend row, one per transaction: the ceiling of any design
-- that keeps a budget in one row (every transaction waits for the previous one's commit)
UPDATE sigledger.budget_spend SET spent_usd = spent_usd + 0.01
 WHERE budget_id = (SELECT budget_id FROM bench.agents WHERE n = 1) AND period_start = timestamptz '1970-01-01 00:00:00+00'
   AND slice = 0;
