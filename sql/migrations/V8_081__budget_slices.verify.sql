-- Returns a row for each part of V8_081 that is missing or not validated, and each period whose slices break
-- the backstop.
SELECT 'budget_spend_pkey without slice' AS problem
 WHERE NOT EXISTS (SELECT FROM pg_constraint c
                    WHERE c.conrelid = 'sigledger.budget_spend'::regclass AND c.contype = 'p'
                      AND c.conkey = ARRAY(SELECT attnum FROM pg_attribute
                                             WHERE attrelid = 'sigledger.budget_spend'::regclass
                                               AND attname IN ('budget_id', 'period_start', 'slice')
                                             ORDER BY array_position(ARRAY['budget_id', 'period_start', 'slice'],
                                                                     attname::text))::smallint[])
UNION ALL
SELECT conname FROM pg_constraint
 WHERE conname IN ('budget_slices_range', 'budget_limit_usd_required', 'budget_spend_slice_range',
                   'budget_spend_frozen_usd_range', 'budget_reservation_slices_match')
   AND NOT convalidated
UNION ALL
SELECT format('budget %s period %s slice %s over its cap', budget_id, period_start, slice)
  FROM sigledger.budget_spend WHERE NOT (spent_usd + reserved_usd <= cap_usd + excess_usd);
