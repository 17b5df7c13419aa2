-- 105: the read-only views of the ledger and budgets (repeatable: `migrate down` drops every view first and
-- rebuilds the repeatables afterwards; re-applied after V4_004 so that they read the partitioned ledger,
-- not the legacy partition the rename left them on). SELECT on them is granted to the app and read-only roles by 900_grants.
-- Every view is a security_barrier (issue 11): a caller's function in the WHERE clause, however cheap its
-- declared COST, runs only on rows the view lets through, never below the view's own filter
-- (tests/core/test_view_leaks.py). Leakproof operators (=, <, ... on ids and times) are still pushed down
-- into index scans.

-- Client cost versus price table: the client's figure is charged (it is what the provider billed, including
-- discounts the table does not model); the priced figure is kept beside it and this view lists the rows
-- where they differ by more than 1% and more than $0.000001, for review.
CREATE OR REPLACE VIEW sigledger.cost_price_disagreement WITH (security_barrier) AS
SELECT id, idempotency_key, agent_id, provider, model, tokens_input, tokens_output,
       cost_usd, priced_usd, cost_usd - priced_usd AS difference_usd, created_at
  FROM sigledger.llm_cost_log
 WHERE priced_usd IS NOT NULL
   AND cost_source = 'client'
   AND abs(cost_usd - priced_usd) > greatest(0.000001, 0.01 * priced_usd);
COMMENT ON VIEW sigledger.cost_price_disagreement IS
    'Ledger rows whose client-reported cost differs from the price table by more than 1% (and $0.000001).';

CREATE OR REPLACE VIEW sigledger.budget_alerts WITH (security_barrier) AS
SELECT a.id, a.budget_id, b.level, b.name, b.agent_id, a.period_start, a.threshold, a.limit_usd, a.spent_usd, a.created_at
  FROM sigledger.budget_alert a JOIN sigledger.budget b ON b.id = a.budget_id;
COMMENT ON VIEW sigledger.budget_alerts IS 'Budget threshold alerts, newest last by id.';

CREATE OR REPLACE VIEW sigledger.budget_overruns WITH (security_barrier) AS
SELECT r.id AS reservation_id, r.agent_id, r.estimate_usd, r.actual_usd, r.overrun_usd, r.ledger_id, r.closed_at
  FROM sigledger.budget_reservation r
 WHERE r.state = 'settled' AND r.overrun_usd > 0;
COMMENT ON VIEW sigledger.budget_overruns IS 'Settled reservations whose actual cost exceeded the estimate.';

-- The period start is computed inline, not through _period_start: a view checks EXECUTE on the functions it
-- calls against the reader, and internal functions are granted to nobody. Keep in step with _period_start
-- (tests/core/test_roles.py compares the two for every period kind).
CREATE OR REPLACE VIEW sigledger.budget_overview WITH (security_barrier) AS
SELECT b.id AS budget_id, b.level, b.name, b.agent_id, b.parent_id, b.period,
       p.period_start, b.limit_usd, b.grace_ratio, b.fail_policy,
       coalesce(s.spent_usd, 0) AS spent_usd, coalesce(s.reserved_usd, 0) AS reserved_usd,
       coalesce(s.excess_usd, 0) AS excess_usd, coalesce(s.version, 0) AS version, b.slices
  FROM sigledger.budget b
 CROSS JOIN LATERAL (
       SELECT CASE b.period
                  WHEN 'none'    THEN timestamptz '1970-01-01 00:00:00+00'
                  WHEN 'daily'   THEN date_trunc('day',   now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                  WHEN 'weekly'  THEN date_trunc('week',  now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                  WHEN 'monthly' THEN date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
              END AS period_start) p
  -- a period's figures are the sums over its slices (V8_081)
  LEFT JOIN LATERAL (
       SELECT sum(x.spent_usd) AS spent_usd, sum(x.reserved_usd) AS reserved_usd, sum(x.excess_usd) AS excess_usd,
              sum(x.version)::bigint AS version
         FROM sigledger.budget_spend x
        WHERE x.budget_id = b.id AND x.period_start = p.period_start) s ON true;
COMMENT ON VIEW sigledger.budget_overview IS
    'Every budget with its current period''s spend and holds (summed over its slices); limit_usd NULL: an agent without a limit of its own under a team or org budget.';

