-- pgTAP: the read API (issue 15). Signatures, that it is read-only (STABLE, so a hot standby runs it), the
-- alert document's shape, the alert sink's at-least-once bookkeeping, and what each role may call.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(24);

SELECT has_function('sigledger', 'spend_report', ARRAY['timestamp with time zone', 'timestamp with time zone', 'text[]', 'uuid', 'bigint', 'text']);
SELECT has_function('sigledger', 'spend_top', ARRAY['timestamp with time zone', 'timestamp with time zone', 'text[]', 'integer', 'text']);
SELECT has_function('sigledger', 'budget_tree', ARRAY[]::text[]);
SELECT has_function('sigledger', 'budgets_near_limit', ARRAY['numeric', 'text']);
SELECT has_function('sigledger', 'quarantine_resubmit', ARRAY['bigint', 'jsonb']);
SELECT has_function('sigledger', 'metrics_snapshot', ARRAY['integer', 'integer', 'integer']);

-- every read of the read API is STABLE (no write, runs on a replica); the writers are the sink and quarantine
SELECT is(
    (SELECT array_agg(p.proname::text ORDER BY p.proname) FROM pg_proc p
      WHERE p.pronamespace = 'sigledger'::regnamespace AND p.provolatile <> 's'
        AND p.proname IN ('spend_report', 'spend_top', 'budget_tree', 'budgets_near_limit', 'list_agents',
                          'open_reservations', 'overrun_report', 'list_model_prices', 'budget_alert_document',
                          'budget_alert_feed', 'budget_alert_last_id', 'alert_sink_status', 'metrics_snapshot', 'quarantine_list',
                          'alert_sink_open', 'alert_sink_pending', 'alert_sink_delivered', 'quarantine_resubmit')),
    ARRAY['alert_sink_delivered', 'alert_sink_open', 'quarantine_resubmit'],
    'only the sink bookkeeping and the resubmission write');

SELECT sigledger.create_agent('tap-r', 1, p_alert_thresholds => '{0.5}') AS a \gset
SELECT sigledger.alert_sink_open('tap-sink') IS NOT NULL AS opened \gset
SELECT sigledger.record_cost('tap-r-1', :'a', 'm', 'p', 0, 0, 0.6) > 0 AS recorded \gset
SELECT max(id) AS alert FROM sigledger.budget_alert \gset

SELECT is((sigledger.budget_alert_document(:alert) ->> 'spent_usd'), '0.6', 'money is a fixed-point string, normalised');
SELECT is((sigledger.budget_alert_document(:alert) ->> 'name'), 'tap-r', 'an agent budget is named after its agent');
SELECT is((SELECT string_agg(k, ',') FROM json_object_keys(sigledger.budget_alert_document(:alert)) k),
          'alert_id,budget_id,level,name,agent,agent_id,period,period_start,threshold,limit_usd,spent_usd,created_at',
          'the document''s keys, in order');
SELECT ok(sigledger.budget_alert_document(1000000000000) IS NULL, 'an unknown id is no alert');
SELECT is((SELECT count(*) FROM sigledger.alert_sink_pending('tap-sink')), 1::bigint, 'the new alert is pending');
SELECT ok(sigledger.alert_sink_delivered('tap-sink', :alert, 2), 'recorded once');
SELECT ok(NOT sigledger.alert_sink_delivered('tap-sink', :alert, 1), 'a second record is a no-op');
SELECT is((SELECT count(*) FROM sigledger.alert_sink_pending('tap-sink')), 0::bigint, 'nothing pending');
SELECT is((SELECT delivered FROM sigledger.alert_sink_status() WHERE sink = 'tap-sink'), 1::bigint, 'status counts it');
SELECT throws_ok($$SELECT * FROM sigledger.alert_sink_pending('no-such-sink')$$, 'P0002',
    'unknown alert sink ''no-such-sink''', 'pending of an unknown sink');
SELECT throws_ok(format('SELECT sigledger.alert_sink_delivered(%L, 1000000000, 1)', 'tap-sink'), 'P0002', NULL,
    'delivered: an unknown alert');
SELECT throws_ok($$SELECT * FROM sigledger.alert_sink_open(' ')$$, '22023', NULL, 'a blank sink name');
SELECT is((SELECT pending FROM sigledger.alert_sink_open('tap-sink-2')), 0::bigint, 'a new sink starts from now');
SELECT is((SELECT pending FROM sigledger.alert_sink_open('tap-sink-2', true)), 1::bigint, 'replay: history pending');

-- roles: readers read, only the admin sees the quarantine, readonly does not write sinks
SELECT ok(has_function_privilege('sigledger_readonly', 'sigledger.spend_report(timestamptz, timestamptz, text[], uuid, bigint, text)', 'EXECUTE'), 'readonly reads spend');
SELECT ok(NOT has_function_privilege('sigledger_readonly', 'sigledger.quarantine_list(boolean, integer)', 'EXECUTE')
          AND NOT has_function_privilege('sigledger_app', 'sigledger.quarantine_list(boolean, integer)', 'EXECUTE')
          AND has_function_privilege('sigledger_admin', 'sigledger.quarantine_list(boolean, integer)', 'EXECUTE'),
          'only the admin lists the quarantine');
SELECT ok(NOT has_function_privilege('sigledger_readonly', 'sigledger.alert_sink_open(text, boolean)', 'EXECUTE'),
          'readonly does not open sinks');

SELECT * FROM finish();
ROLLBACK;
