-- 175: metrics_snapshot, what the Prometheus exporter (`sigledger metrics serve`, as sigledger_readonly)
-- reads at each scrape: every gauge of what lives in the database, in one call, at bounded cardinality.
-- Label sets are bounded by the arguments (top budgets and models; everything else is an aggregate), so a
-- deployment with many agents does not explode Prometheus' series count. Read-only: runs on replicas.

CREATE OR REPLACE FUNCTION sigledger.metrics_snapshot(
    p_max_groups integer DEFAULT 100, p_top_agents integer DEFAULT 20, p_top_models integer DEFAULT 20)
RETURNS TABLE (metric text, labels jsonb, value double precision)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_today timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    IF p_max_groups IS NULL OR p_max_groups < 0 OR p_max_groups > 1000
       OR p_top_agents IS NULL OR p_top_agents < 0 OR p_top_agents > 1000
       OR p_top_models IS NULL OR p_top_models < 0 OR p_top_models > 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('max_groups, top_agents and top_models must be between 0 and 1000, got %s, %s, %s',
                             p_max_groups, p_top_agents, p_top_models);
    END IF;

    -- budgets: the fullest org/team budgets (up to max_groups) and agent budgets (up to top_agents)
    RETURN QUERY
    WITH c AS (SELECT * FROM _budget_current()),
    chosen AS (
        (SELECT * FROM c WHERE c.level <> 'agent' ORDER BY c.used_ratio DESC NULLS LAST, c.budget_id LIMIT p_max_groups)
        UNION ALL
        (SELECT * FROM c WHERE c.level = 'agent' ORDER BY c.used_ratio DESC NULLS LAST, c.budget_id LIMIT p_top_agents)
    )
    SELECT m.metric, jsonb_build_object('level', x.level, 'budget', x.name, 'period', x.period), m.value
      FROM chosen x
     CROSS JOIN LATERAL (VALUES ('sigledger_budget_limit_usd', x.limit_usd::float8),
                                ('sigledger_budget_spent_usd', x.spent_usd::float8),
                                ('sigledger_budget_reserved_usd', x.reserved_usd::float8),
                                ('sigledger_budget_used_ratio', coalesce(x.used_ratio, 0)::float8)) m(metric, value)
     WHERE m.value IS NOT NULL;  -- (an agent without a limit of its own has no limit series)

    -- every budget counted by level and state (a complete picture at fixed cardinality)
    RETURN QUERY
    SELECT 'sigledger_budgets', jsonb_build_object('level', l.level, 'state', s.state),
           count(c.budget_id)::float8
      FROM (VALUES ('org'), ('team'), ('agent')) l(level)
     CROSS JOIN (VALUES ('ok'), ('near'), ('at_limit'), ('over')) s(state)
      LEFT JOIN (SELECT b.budget_id, b.level,
                        CASE WHEN b.spent_usd > b.limit_usd THEN 'over'
                             WHEN b.spent_usd + b.reserved_usd >= b.limit_usd
                                  AND (b.limit_usd > 0 OR b.spent_usd + b.reserved_usd > 0) THEN 'at_limit'
                             WHEN b.used_ratio >= 0.8 THEN 'near'
                             ELSE 'ok' END AS state
                   FROM _budget_current() b) c ON c.level = l.level AND c.state = s.state
     GROUP BY l.level, s.state;

    -- the ledger today (UTC), per model: the top_models by spend, the rest summed as provider/model "other"
    RETURN QUERY
    WITH d AS (
        SELECT l.provider, l.model, sum(l.cost_usd) AS usd, count(*) AS calls
          FROM llm_cost_log l WHERE l.created_at >= v_today
         GROUP BY l.provider, l.model
    ), r AS (
        SELECT d.*, row_number() OVER (ORDER BY d.usd DESC, d.provider, d.model) AS n FROM d
    ), g AS (
        SELECT CASE WHEN r.n <= p_top_models THEN r.provider ELSE 'other' END AS provider,
               CASE WHEN r.n <= p_top_models THEN r.model ELSE 'other' END AS model,
               sum(r.usd) AS usd, sum(r.calls) AS calls
          FROM r GROUP BY 1, 2
    )
    SELECT m.metric, jsonb_build_object('provider', g.provider, 'model', g.model), m.value
      FROM g CROSS JOIN LATERAL (VALUES ('sigledger_ledger_usd_today', g.usd::float8),
                                        ('sigledger_ledger_calls_today', g.calls::float8)) m(metric, value);

    RETURN QUERY
    SELECT 'sigledger_cost_quarantine_rows', '{}'::jsonb, count(*)::float8
      FROM cost_quarantine q WHERE q.resolved_at IS NULL;

    RETURN QUERY
    SELECT m.metric, '{}'::jsonb, m.value
      FROM (SELECT count(*) AS open, count(*) FILTER (WHERE r.expires_at <= now()) AS overdue
              FROM budget_reservation r WHERE r.state = 'open') x
     CROSS JOIN LATERAL (VALUES ('sigledger_reservations_open', x.open::float8),
                                ('sigledger_reservations_overdue', x.overdue::float8)) m(metric, value);

    RETURN QUERY
    SELECT 'sigledger_alert_sink_pending', jsonb_build_object('sink', s.sink), s.pending::float8
      FROM alert_sink_status() s;

    -- partitions: months ahead of the current one (the sweep keeps 3), and rows stuck in DEFAULT (should be 0)
    RETURN QUERY
    SELECT 'sigledger_ledger_partition_months_ahead', '{}'::jsonb,
           count(*) FILTER (WHERE c.relname > 'llm_cost_log_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM'))::float8
      FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass AND c.relname ~ '^llm_cost_log_p[0-9]{6}$';
    RETURN QUERY
    SELECT 'sigledger_ledger_default_partition_rows', '{}'::jsonb, count(*)::float8
      FROM (SELECT 1 FROM llm_cost_log_default LIMIT 100000) x;
END;
$$;
COMMENT ON FUNCTION sigledger.metrics_snapshot(integer, integer, integer) IS
'Every database gauge of the Prometheus exporter as (metric, labels, value): budget limit/spent/reserved/used
ratio of the fullest max_groups org/team budgets and top_agents agent budgets (current period), budgets by
level and state, today''s (UTC) ledger USD and calls of the top_models models (the rest as "other"),
unresolved quarantine rows, open and overdue reservations, alerts pending per sink, ledger partitions ahead and
rows in the DEFAULT partition. Arguments 0..1000. Read-only.
SQLSTATE: 22023';
