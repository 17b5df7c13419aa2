-- 160: the read API for spend (issue 15): who spent what, on which model, when; teams and organisations as the
-- budget hierarchy says now. Every function here is read-only (STABLE, no temporary table, no write), so the
-- whole read API runs on a hot standby as well as on the primary (docs/operations.md, Replicas).
--
-- Time axis: the ledger's created_at (when the cost was recorded, UTC), the ledger's partition key, so a range
-- reads only the partitions it covers. Budgets charge the period of charged_at (for a settled reservation: the
-- reservation's creation), so a call reserved before a period boundary and settled after it counts in the
-- budget's old period and in the report's new day; the budget figures are in budget_tree()/budgets_near_limit().

-- _agent_hierarchy: every agent with its own budget and the team and org budgets above it (now).
-- (One place: the reports, the agent list and the metrics attribute spend to teams through it.)
-- PARALLEL SAFE (it only reads): a parallel-unsafe function anywhere in a query forbids a parallel plan, and
-- the ledger pass of a month-long report is a parallel scan of a partition.
CREATE OR REPLACE FUNCTION sigledger._agent_hierarchy()
RETURNS TABLE (agent_id uuid, agent text, agent_budget_id bigint, team_budget_id bigint, team text,
               org_budget_id bigint, org text)
LANGUAGE sql
STABLE
PARALLEL SAFE
SET search_path = sigledger, pg_temp
AS $$
    SELECT a.id, a.name, ab.id,
           CASE WHEN p.level = 'team' THEN p.id END,
           CASE WHEN p.level = 'team' THEN p.name END,
           CASE WHEN p.level = 'org' THEN p.id WHEN g.level = 'org' THEN g.id END,
           CASE WHEN p.level = 'org' THEN p.name WHEN g.level = 'org' THEN g.name END
      FROM sigledger.agent_registry a
      LEFT JOIN sigledger.budget ab ON ab.agent_id = a.id
      LEFT JOIN sigledger.budget p ON p.id = ab.parent_id
      LEFT JOIN sigledger.budget g ON g.id = p.parent_id;
$$;

-- _assert_limit: raise 22023 unless p_value (a row limit of a read) lies in [1, p_max].
CREATE OR REPLACE FUNCTION sigledger._assert_limit(p_value integer, p_max integer)
RETURNS integer
LANGUAGE plpgsql
IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_value IS NULL OR p_value < 1 OR p_value > p_max THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('limit must be between 1 and %s, got %s', p_max, coalesce(p_value::text, 'NULL'));
    END IF;
    RETURN p_value;
END;
$$;

-- _report_range: validates a report's time range (both ends given, since < until, at most ten years).
CREATE OR REPLACE FUNCTION sigledger._report_range(p_since timestamptz, p_until timestamptz)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_since IS NULL OR p_until IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'since and until must not be NULL';
    END IF;
    IF NOT (p_since > '-infinity' AND p_until < 'infinity') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('since and until must be finite, got %s .. %s', p_since, p_until);
    END IF;
    IF p_until <= p_since THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('until must lie after since, got %s .. %s', p_since, p_until);
    END IF;
    IF p_until - p_since > interval '3660 days' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('a report covers at most 3660 days, got %s .. %s', p_since, p_until);
    END IF;
END;
$$;

-- _report_agents: the agents a report is restricted to (NULL: all): one agent, or the agents under a budget.
CREATE OR REPLACE FUNCTION sigledger._report_agents(p_agent_id uuid, p_budget_id bigint)
RETURNS uuid[]
LANGUAGE plpgsql
STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_agents uuid[];
BEGIN
    IF p_agent_id IS NOT NULL AND NOT EXISTS (SELECT FROM sigledger.agent_registry a WHERE a.id = p_agent_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown agent %s', p_agent_id);
    END IF;
    IF p_budget_id IS NULL THEN
        RETURN CASE WHEN p_agent_id IS NULL THEN NULL ELSE ARRAY[p_agent_id] END;
    END IF;
    IF NOT EXISTS (SELECT FROM sigledger.budget b WHERE b.id = p_budget_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown budget %s', p_budget_id);
    END IF;
    SELECT coalesce(array_agg(h.agent_id), '{}') INTO v_agents
      FROM sigledger._agent_hierarchy() h
     WHERE p_budget_id IN (h.agent_budget_id, h.team_budget_id, h.org_budget_id)
       AND (p_agent_id IS NULL OR h.agent_id = p_agent_id);
    RETURN v_agents;
END;
$$;

-- spend_report: spend, calls and tokens over [since, until), grouped by up to four dimensions, plus a total
-- row. Dimensions: agent, team, org (the budget hierarchy now), model, provider, day | week | month (UTC
-- buckets of created_at; at most one), tag (the metadata value under tag_key).
-- Built as dynamic SQL from a fixed vocabulary (no caller text reaches the statement; values are parameters):
-- each call is planned with its own range, so only the partitions of the range are read, and one agent's
-- rows come from the ledger's (agent_id, charged_at) index.
CREATE OR REPLACE FUNCTION sigledger.spend_report(
    p_since timestamptz,
    p_until timestamptz,
    p_by text[] DEFAULT '{agent}',
    p_agent_id uuid DEFAULT NULL,
    p_budget_id bigint DEFAULT NULL,
    p_tag_key text DEFAULT 'tag')
RETURNS TABLE (is_total boolean, bucket timestamptz, agent_id uuid, agent text, team text, org text, model text,
               provider text, tag text, spend_usd numeric, calls bigint, input_tokens numeric,
               output_tokens numeric)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    c_dims CONSTANT text[] := '{agent,team,org,model,provider,day,week,month,tag}';
    v_by text[] := coalesce(p_by, '{}');
    v_agents uuid[];
    v_bucket text;
    v_inner text[] := '{}';   -- grouping columns of the ledger pass
    v_outer text[] := '{}';   -- grouping columns of the output
    v_sql text;
BEGIN
    PERFORM _report_range(p_since, p_until);
    IF cardinality(v_by) > 4 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('at most 4 dimensions, got %s', cardinality(v_by));
    END IF;
    IF EXISTS (SELECT FROM unnest(v_by) d WHERE d IS NULL OR NOT d = ANY (c_dims)) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('dimensions must be among %s, got %s', array_to_string(c_dims, ', '),
                             left(v_by::text, 200));
    END IF;
    IF (SELECT count(DISTINCT d) FROM unnest(v_by) d) <> cardinality(v_by) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('repeated dimension in %s', v_by);
    END IF;
    IF (SELECT count(*) FROM unnest(v_by) d WHERE d IN ('day', 'week', 'month')) > 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('at most one of day, week, month, got %s', v_by);
    END IF;
    IF 'tag' = ANY (v_by) THEN
        PERFORM _assert_text('tag_key', p_tag_key);
    END IF;
    v_agents := _report_agents(p_agent_id, p_budget_id);

    v_bucket := (SELECT d FROM unnest(v_by) d WHERE d IN ('day', 'week', 'month'));
    IF v_bucket IS NOT NULL THEN
        v_inner := v_inner || format('date_trunc(%L, l.created_at AT TIME ZONE ''UTC'') AT TIME ZONE ''UTC''', v_bucket);
        v_outer := v_outer || 'x.g_bucket'::text;
    END IF;
    IF v_by && '{agent,team,org}' THEN
        v_inner := v_inner || 'l.agent_id'::text;
    END IF;
    IF 'agent' = ANY (v_by) THEN
        v_outer := v_outer || 'x.g_agent'::text || 'h.agent'::text;
    END IF;
    IF 'team' = ANY (v_by) THEN
        v_outer := v_outer || 'h.team'::text;
    END IF;
    IF 'org' = ANY (v_by) THEN
        v_outer := v_outer || 'h.org'::text;
    END IF;
    IF 'model' = ANY (v_by) THEN
        v_inner := v_inner || 'l.model'::text;
        v_outer := v_outer || 'x.g_model'::text;
    END IF;
    IF 'provider' = ANY (v_by) THEN
        v_inner := v_inner || 'l.provider'::text;
        v_outer := v_outer || 'x.g_provider'::text;
    END IF;
    IF 'tag' = ANY (v_by) THEN
        v_inner := v_inner || 'l.metadata ->> $4'::text;
        v_outer := v_outer || 'x.g_tag'::text;
    END IF;

    -- pass 1 groups the ledger rows of the range (the expensive part) by what pass 2 needs; pass 2 names the
    -- agents, maps them to teams and orgs, and adds the total row (GROUPING SETS: the empty set always yields
    -- one row, also over no data)
    v_sql := format(
        'WITH x AS (SELECT %s, sum(l.cost_usd) AS spend, count(*) AS calls, sum(l.tokens_input) AS tin,'
        '                  sum(l.tokens_output) AS tout'
        '             FROM sigledger.llm_cost_log l'
        '            WHERE l.created_at >= $1 AND l.created_at < $2'
        '              AND ($3::uuid[] IS NULL OR l.agent_id = ANY ($3))'
        '            GROUP BY %s)'
        ' SELECT %s AS is_total, %s, %s, %s, %s, %s, %s, %s, %s,'
        '        coalesce(sum(x.spend), 0), coalesce(sum(x.calls), 0)::bigint,'
        '        coalesce(sum(x.tin), 0), coalesce(sum(x.tout), 0)'
        '   FROM x %s'
        '  GROUP BY %s'
        '  ORDER BY 1, 2, 10 DESC, 4, 5, 6, 7, 8, 9',
        -- pass 1 select list: each grouping column under a fixed alias
        CASE WHEN cardinality(v_inner) = 0 THEN '1 AS g_none'
             ELSE (SELECT string_agg(e || ' AS ' ||
                         CASE WHEN e LIKE 'date_trunc%' THEN 'g_bucket' WHEN e = 'l.agent_id' THEN 'g_agent'
                              WHEN e = 'l.model' THEN 'g_model' WHEN e = 'l.provider' THEN 'g_provider'
                              ELSE 'g_tag' END, ', ' ORDER BY o)
                     FROM unnest(v_inner) WITH ORDINALITY AS u(e, o)) END,
        CASE WHEN cardinality(v_inner) = 0 THEN '1'
             ELSE (SELECT string_agg(o::text, ', ' ORDER BY o) FROM unnest(v_inner) WITH ORDINALITY AS u(e, o)) END,
        CASE WHEN cardinality(v_outer) = 0 THEN 'true' ELSE 'GROUPING(' || v_outer[1] || ') = 1' END,
        CASE WHEN v_bucket IS NOT NULL THEN 'x.g_bucket' ELSE 'NULL::timestamptz' END,
        CASE WHEN 'agent' = ANY (v_by) THEN 'x.g_agent' ELSE 'NULL::uuid' END,
        CASE WHEN 'agent' = ANY (v_by) THEN 'h.agent' ELSE 'NULL::text' END,
        CASE WHEN 'team' = ANY (v_by) THEN 'h.team' ELSE 'NULL::text' END,
        CASE WHEN 'org' = ANY (v_by) THEN 'h.org' ELSE 'NULL::text' END,
        CASE WHEN 'model' = ANY (v_by) THEN 'x.g_model' ELSE 'NULL::text' END,
        CASE WHEN 'provider' = ANY (v_by) THEN 'x.g_provider' ELSE 'NULL::text' END,
        CASE WHEN 'tag' = ANY (v_by) THEN 'x.g_tag' ELSE 'NULL::text' END,
        CASE WHEN v_by && '{agent,team,org}' THEN 'LEFT JOIN sigledger._agent_hierarchy() h ON h.agent_id = x.g_agent'
             ELSE '' END,
        CASE WHEN cardinality(v_outer) = 0 THEN '()'
             ELSE 'GROUPING SETS ((' || array_to_string(v_outer, ', ') || '), ())' END);
    RETURN QUERY EXECUTE v_sql USING p_since, p_until, v_agents, p_tag_key;
END;
$$;
COMMENT ON FUNCTION sigledger.spend_report(timestamptz, timestamptz, text[], uuid, bigint, text) IS
'Spend (USD), calls and tokens of the ledger rows recorded in [since, until), grouped by up to four of: agent,
team, org (the budget hierarchy as it is now; NULL: none), model, provider, day | week | month (UTC buckets,
at most one), tag (the metadata value under tag_key, default "tag"). Restrict to one agent (agent_id) and/or to
the agents under a budget (budget_id). The last row (is_total) holds the totals. Read-only: runs on replicas.
SQLSTATE: 22004, 22023, P0002';

-- spend_top: the n largest groups of spend_report over a range (default: agents).
CREATE OR REPLACE FUNCTION sigledger.spend_top(
    p_since timestamptz,
    p_until timestamptz,
    p_by text[] DEFAULT '{agent}',
    p_limit integer DEFAULT 10,
    p_tag_key text DEFAULT 'tag')
RETURNS TABLE (rank bigint, bucket timestamptz, agent_id uuid, agent text, team text, org text, model text,
               provider text, tag text, spend_usd numeric, calls bigint, input_tokens numeric,
               output_tokens numeric)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    PERFORM _assert_limit(p_limit, 10000);
    IF cardinality(coalesce(p_by, '{}')) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'top needs at least one dimension';
    END IF;
    RETURN QUERY
    SELECT row_number() OVER (ORDER BY r.spend_usd DESC, r.calls DESC), r.bucket, r.agent_id, r.agent, r.team,
           r.org, r.model, r.provider, r.tag, r.spend_usd, r.calls, r.input_tokens, r.output_tokens
      FROM spend_report(p_since, p_until, p_by, NULL, NULL, p_tag_key) r
     WHERE NOT r.is_total
     ORDER BY r.spend_usd DESC, r.calls DESC
     LIMIT p_limit;
END;
$$;
COMMENT ON FUNCTION sigledger.spend_top(timestamptz, timestamptz, text[], integer, text) IS
'The limit (1..10000) largest groups by spend over [since, until), grouped as spend_report (default: agents).
SQLSTATE: 22004, 22023';
