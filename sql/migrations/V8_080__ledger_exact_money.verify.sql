-- Returns a row when a ledger money column still carries a typmod (rounds) or its range CHECK is not validated.
SELECT attname AS problem FROM pg_attribute
 WHERE attrelid = 'sigledger.llm_cost_log'::regclass AND attname IN ('cost_usd', 'priced_usd') AND atttypmod <> -1
UNION ALL
SELECT conname FROM pg_constraint
 WHERE conrelid = 'sigledger.llm_cost_log'::regclass
   AND conname IN ('llm_cost_log_cost_usd_range', 'llm_cost_log_priced_usd_range') AND NOT convalidated;
