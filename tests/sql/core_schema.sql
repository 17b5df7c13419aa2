-- pgTAP: the baseline schema's shape, privileges and declarative validation (each rejected by SQLSTATE).
BEGIN;
SELECT plan(23);

SELECT has_schema('sigledger');
SELECT has_role('sigledger_owner');
SELECT has_role('sigledger_app');
SELECT has_role('sigledger_readonly');
SELECT schema_owner_is('sigledger', 'sigledger_owner');
SELECT tables_are('sigledger', ARRAY['entities', 'entity_aliases', 'signals', 'signal_entities', 'opportunities',
    'opportunity_signals', 'agent_registry', 'llm_cost_log', 'outbox']::name[]
    || ARRAY(SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'sigledger'::regnamespace
             AND c.relkind IN ('r', 'p') AND c.relname NOT IN ('entities', 'entity_aliases', 'signals',
             'signal_entities', 'opportunities', 'opportunity_signals', 'agent_registry', 'llm_cost_log',
             'outbox')));

-- The seed's four critical indexes exist, on the right columns.
SELECT has_index('sigledger', 'signal_entities', 'idx_signal_entities_entity_id', 'entity_id');
SELECT has_index('sigledger', 'signal_entities', 'idx_signal_entities_signal_id', 'signal_id');
SELECT has_index('sigledger', 'entity_aliases', 'idx_entity_aliases_canonical_id', 'canonical_entity_id');
SELECT has_index('sigledger', 'entity_aliases', 'idx_entity_aliases_alias_name', 'lower(alias)');

-- opportunity_signals has real foreign keys that cascade (the seed's claimed them and had none).
SELECT col_is_pk('sigledger', 'opportunity_signals', ARRAY['opportunity_id', 'signal_id']::name[], 'composite primary key');
SELECT fk_ok('sigledger', 'opportunity_signals', 'opportunity_id', 'sigledger', 'opportunities', 'id', 'fk to opportunities');
SELECT fk_ok('sigledger', 'opportunity_signals', 'signal_id', 'sigledger', 'signals', 'id', 'fk to signals');
SELECT is((SELECT confdeltype FROM pg_constraint WHERE conname = 'opportunity_signals_signal_id_fkey'), 'c'::"char",
          'opportunity_signals.signal_id cascades on delete');

-- The version column and its trigger (V3_010).
SELECT has_column('sigledger', 'agent_registry', 'version', 'agent_registry.version exists');
SELECT col_type_is('sigledger'::name, 'agent_registry'::name, 'version'::name, 'bigint', 'version is bigint');
SELECT has_trigger('sigledger', 'agent_registry', 'trg_increment_agent_version'::name, 'version trigger exists');

INSERT INTO sigledger.agent_registry (id, name, budget_limit_usd)
VALUES ('00000000-0000-0000-0000-00000000a001', 'tap-agent', 10);
UPDATE sigledger.agent_registry SET budget_limit_usd = 11 WHERE id = '00000000-0000-0000-0000-00000000a001';
UPDATE sigledger.agent_registry SET budget_limit_usd = 12 WHERE id = '00000000-0000-0000-0000-00000000a001';
SELECT is((SELECT version FROM sigledger.agent_registry WHERE name = 'tap-agent'), 2::bigint,
          'every update bumps the version');

-- Declarative validation: a direct INSERT by the owner cannot store a bad row either.
SELECT throws_ok($$INSERT INTO sigledger.agent_registry (name, budget_limit_usd) VALUES ('nan', 'NaN')$$,
                 '23514', NULL, 'NaN budget is rejected by a CHECK');
SELECT throws_ok($$INSERT INTO sigledger.agent_registry (name, budget_limit_usd) VALUES ('neg', -1)$$,
                 '23514', NULL, 'negative budget is rejected by a CHECK');
SELECT throws_ok($$INSERT INTO sigledger.agent_registry (name, budget_limit_usd) VALUES ('inf', 'Infinity')$$,
                 NULL, NULL, 'Infinity budget is rejected');
SELECT throws_ok($$INSERT INTO sigledger.signals (source, external_id, occurred_at) VALUES ('s', ' ', now())$$,
                 '23514', NULL, 'a blank external_id is rejected');
SELECT throws_ok($$INSERT INTO sigledger.opportunities (title, status) VALUES ('t', 'merged')$$,
                 '23514', NULL, 'a tombstone without a winner is rejected');

SELECT * FROM finish();
ROLLBACK;
