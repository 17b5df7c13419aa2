-- sigledger:always
-- Privileges, re-applied after every change. Tables are private: nobody but the owner writes one. Every
-- function that some role may execute is listed below with its audience; a function with no leading "_" that
-- is missing from the list stops the deployment (so a new API function is never exposed, or hidden, by
-- accident).
--   app       sigledger_app: the applications (sigledger_admin is a member and inherits this)
--   readonly  sigledger_readonly: dashboards and reports
--   admin     sigledger_admin: budgets, limits, prices, reconciliation, sweeps
--   graph     sigledger_graph: the Neo4j sync worker
-- The groups are NOLOGIN: applications log in as member logins (sigledger role create-login). The list is a
-- function (not a temporary table: a deployer may lack TEMP) that `sigledger migrate verify` also reads, to
-- check that the privileges in place are exactly these.
CREATE OR REPLACE FUNCTION sigledger._api_audience() RETURNS TABLE (fn name, audience text[])
LANGUAGE sql IMMUTABLE
SET search_path = sigledger, pg_temp
AS $audience$
    SELECT a.fn::name, a.audience::text[] FROM (VALUES
        -- ledger and budgets
        ('record_cost', '{app}'), ('record_costs', '{app}'), ('cost_trends', '{app,readonly}'),
        ('reserve_budget', '{app}'), ('settle_budget', '{app}'), ('release_budget', '{app}'),
        ('check_and_record_budget', '{app}'), ('budget_status', '{app,readonly}'),
        ('budget_alerts_after', '{app,readonly}'), ('find_agent', '{app,readonly}'),
        ('create_agent', '{admin}'), ('set_budget', '{admin}'), ('update_budget', '{admin}'),
        ('create_group_budget', '{admin}'), ('add_model_price', '{admin}'), ('reconcile_budgets', '{admin}'),
        ('expire_reservations', '{admin}'), ('ensure_ledger_partitions', '{admin}'),
        ('reserve_budgets', '{app}'), ('settle_budgets', '{app}'), ('set_budget_slices', '{admin}'),
        ('fire_missed_alerts', '{admin}'),
        -- the read side: spend, budgets, reservations, prices, alerts, metrics (readonly: dashboards, replicas)
        ('spend_report', '{app,readonly}'), ('spend_top', '{app,readonly}'), ('budget_tree', '{app,readonly}'),
        ('budgets_near_limit', '{app,readonly}'), ('list_agents', '{app,readonly}'),
        ('open_reservations', '{app,readonly}'), ('overrun_report', '{app,readonly}'),
        ('list_model_prices', '{app,readonly}'), ('budget_alert_document', '{app,readonly}'),
        ('budget_alert_feed', '{app,readonly}'), ('budget_alert_last_id', '{app,readonly}'), ('alert_sink_status', '{app,readonly}'),
        ('metrics_snapshot', '{app,readonly}'), ('quarantine_list', '{admin}'), ('quarantine_resubmit', '{admin}'),
        -- the alert sinks are the operators' (issue 15): their watcher logs in as an admin member, and an
        -- application login must not mark its own overspend alerts delivered
        ('alert_sink_open', '{admin}'), ('alert_sink_pending', '{admin}'), ('alert_sink_delivered', '{admin}'),
        -- signals, entities, opportunities
        ('ingest_signal', '{app}'), ('ingest_signals', '{app}'), ('create_entity', '{app}'),
        ('add_alias', '{app}'), ('resolve_entity', '{app,readonly}'), ('merge_entities', '{app}'),
        ('create_opportunity', '{app}'), ('link_signals', '{app}'), ('merge_opportunities', '{app}'),
        ('opportunity_signals_of', '{app,readonly}'), ('entity_signals_of', '{app,readonly}'),
        ('text_key', '{app,readonly}'),
        -- Neo4j projection
        ('graph_outbox_status', '{app,readonly,admin,graph}'),
        ('_graph_claim', '{graph}'), ('_graph_snapshot', '{graph,admin}'), ('_graph_ack', '{graph}'),
        ('_graph_fail', '{graph}'), ('_graph_live_ids', '{graph,admin}'), ('_graph_live_counts', '{graph,admin}'), ('_graph_dead_list', '{graph,admin}'),
        ('_graph_dead_retry', '{graph,admin}'), ('_graph_dead_purge', '{graph,admin}'),
        ('_graph_enqueue', '{graph,admin}'), ('_graph_enqueue_all', '{graph,admin}'),
        ('_graph_identity', '{graph,admin}'), ('_graph_mark_written', '{graph}'), ('_graph_adopt', '{admin}'),
        ('_graph_hold', '{graph,admin}')
    ) AS a (fn, audience);
$audience$;
COMMENT ON FUNCTION sigledger._api_audience() IS
'Which group may execute each function (900_grants.sql applies it; migrate verify checks it). Internal.
SQLSTATE: none';

REVOKE ALL ON ALL TABLES IN SCHEMA sigledger FROM PUBLIC, sigledger_app, sigledger_readonly, sigledger_admin,
    sigledger_graph;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA sigledger FROM PUBLIC, sigledger_app, sigledger_readonly, sigledger_admin,
    sigledger_graph;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA sigledger FROM PUBLIC, sigledger_app, sigledger_readonly, sigledger_admin,
    sigledger_graph;

DO $grants$
DECLARE
    v_fn regprocedure;
    v_name name;
    v_audience text[];
    v_role text;
    v_view regclass;
BEGIN
    FOR v_fn, v_name IN
        SELECT p.oid::regprocedure, p.proname
          FROM pg_proc p
         WHERE p.pronamespace = 'sigledger'::regnamespace
           AND p.prorettype <> 'trigger'::regtype
           AND p.prokind IN ('f', 'p')
    LOOP
        SELECT a.audience INTO v_audience FROM sigledger._api_audience() a WHERE a.fn = v_name;
        IF v_audience IS NULL THEN
            IF v_name !~ '^_' THEN
                RAISE EXCEPTION USING
                    ERRCODE = '0LP01',
                    MESSAGE = format('API function %s has no audience in sql/functions/900_grants.sql', v_fn),
                    HINT = 'Add it to the list with the roles that may execute it.';
            END IF;
            CONTINUE;  -- internal helper: executable by the owner only
        END IF;
        FOREACH v_role IN ARRAY v_audience LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', v_fn, 'sigledger_' || v_role);
        END LOOP;
    END LOOP;
    FOR v_view IN
        SELECT c.oid::regclass FROM pg_class c
         WHERE c.relnamespace = 'sigledger'::regnamespace AND c.relkind IN ('v', 'm')
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO sigledger_app, sigledger_readonly', v_view);
    END LOOP;
END
$grants$;
