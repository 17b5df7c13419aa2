-- Raises when V4_002 is not in place; returns rows when a budget row breaks its backstop.
SELECT 'sigledger.budget'::regclass, 'sigledger.budget_spend'::regclass, 'sigledger.budget_reservation'::regclass,
       'sigledger.budget_alert'::regclass
 WHERE false;
SELECT budget_id, period_start FROM sigledger.budget_spend
 WHERE NOT (spent_usd + reserved_usd <= cap_usd + excess_usd);
