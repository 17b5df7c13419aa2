-- pgTAP: create_entity, resolve_entity, add_alias, merge_entities, entity read API, backstops (issue 4).
SELECT plan(49);

SELECT has_function('sigledger', 'create_entity', ARRAY['text', 'text[]', 'text']);
SELECT has_function('sigledger', 'resolve_entity', ARRAY['text']);
SELECT has_function('sigledger', 'add_alias', ARRAY['uuid', 'text']);
SELECT has_function('sigledger', 'merge_entities', ARRAY['uuid', 'uuid[]']);
SELECT is_definer('sigledger', 'merge_entities', ARRAY['uuid', 'uuid[]']);
SELECT has_view('sigledger', 'entity_with_aliases', 'entity_with_aliases view');
SELECT has_index('sigledger', 'entity_aliases', 'entity_aliases_alias_key_key', 'unique alias index');
SELECT index_is_unique('sigledger', 'entity_aliases', 'entity_aliases_alias_key_key');

-- create_entity / resolve_entity
SELECT lives_ok($$SELECT sigledger.create_entity('Acme Corp', ARRAY['ACME', 'acme corporation'])$$, 'create_entity with aliases');
SELECT is(sigledger.resolve_entity('acme'), (SELECT id FROM sigledger.entities WHERE name = 'Acme Corp'), 'resolve by alias, any case');
SELECT is(sigledger.resolve_entity('  Acme Corporation '), sigledger.resolve_entity('ACME CORP'), 'blanks ignored, name is an alias');
SELECT is(sigledger.resolve_entity('nobody'), NULL, 'unknown name resolves to NULL');
SELECT has_view('sigledger', 'entity_alias_lookup', 'entity_alias_lookup view');
SELECT is((SELECT entity_id FROM sigledger.entity_alias_lookup WHERE alias_key = sigledger.text_key(' acme CORPORATION ')),
          sigledger.resolve_entity('acme corporation'), 'the lookup view answers like resolve_entity');
SELECT is((SELECT aliases FROM sigledger.entity_with_aliases WHERE name = 'Acme Corp'),
          ARRAY['ACME', 'Acme Corp', 'acme corporation'], 'entity_with_aliases lists aliases');
SELECT throws_ok($$SELECT sigledger.create_entity('acme')$$, '23505', NULL, 'a name that is another entity''s alias: 23505');
SELECT throws_matching($$SELECT sigledger.create_entity('Other', ARRAY['ACME'])$$, 'alias ''ACME'' already belongs to entity', 'message names the alias and owner');
SELECT is((SELECT count(*)::int FROM sigledger.entities), 1, 'failed create_entity left nothing');
SELECT throws_ok($$SELECT sigledger.create_entity('  ')$$, '22023', NULL, 'blank name: 22023');
SELECT throws_ok($$SELECT sigledger.create_entity('X', ARRAY[NULL::text])$$, '22023', NULL, 'NULL alias: 22023');
SELECT throws_ok($$SELECT sigledger.resolve_entity('')$$, '22023', NULL, 'resolve blank: 22023');
SELECT throws_ok($$SELECT sigledger.resolve_entity(NULL)$$, '22023', NULL, 'resolve NULL: 22023');

-- add_alias
SELECT sigledger.create_entity('Beta') AS beta \gset
SELECT is(sigledger.add_alias(:'beta', 'Beta Inc'), true, 'add_alias adds');
SELECT is(sigledger.add_alias(:'beta', 'BETA INC'), false, 'add_alias again (any case) is a no-op');
SELECT throws_ok(format('SELECT sigledger.add_alias(%L, %L)', :'beta', 'acme'), '23505', NULL, 'alias of another entity: 23505');
SELECT throws_ok(format('SELECT sigledger.add_alias(%L, %L)', gen_random_uuid(), 'x'), 'P0002', NULL, 'unknown entity: P0002');
SELECT throws_ok(format('SELECT sigledger.add_alias(%L, %L)', :'beta', ''), '22023', NULL, 'blank alias: 22023');
SELECT throws_ok($$SELECT sigledger.add_alias(NULL, 'x')$$, '22023', NULL, 'NULL entity: 22023');
SELECT is((SELECT count(*)::int FROM sigledger.outbox WHERE event_type = 'entity.aliased'), 1, 'entity.aliased outbox row');

-- merge_entities: aliases and links move, no duplicate links, tombstone, history, outbox
SELECT sigledger.create_entity('Gamma') AS gamma \gset
SELECT signal_id AS s1 FROM sigledger.ingest_signal('rss', '1', now(), '{}', ARRAY['Acme', 'Beta']) \gset
SELECT signal_id AS s2 FROM sigledger.ingest_signal('rss', '2', now(), '{}', ARRAY['Beta Inc', 'Gamma']) \gset
SELECT sigledger.resolve_entity('acme') AS acme \gset
CREATE TEMP TABLE m AS SELECT * FROM sigledger.merge_entities(:'acme', ARRAY[:'beta', :'gamma']::uuid[]);
-- source links: (s1, beta), (s2, beta), (s2, gamma); s1 already links acme: only s2 moves, two are duplicates
SELECT is((SELECT (moved_aliases, moved_links, duplicate_links) FROM m), (3, 1, 2), 'merge counts: 3 aliases, 1 link moved, 2 duplicates');
SELECT is(sigledger.resolve_entity('beta inc'), :'acme'::uuid, 'aliases of a source now resolve to the target');
SELECT is((SELECT array_agg(signal_id ORDER BY signal_id) FROM sigledger.signal_entities WHERE entity_id = :'acme'),
          (SELECT array_agg(x ORDER BY x) FROM unnest(ARRAY[:'s1', :'s2']::uuid[]) x), 'links moved to the target');
SELECT is((SELECT count(*)::int FROM sigledger.signal_entities WHERE entity_id IN (:'beta', :'gamma')), 0, 'no link left on a source');
SELECT is((SELECT mention FROM sigledger.signal_entities WHERE signal_id = :'s2' AND entity_id = :'acme'),
          (SELECT CASE WHEN :'beta'::uuid < :'gamma'::uuid THEN 'Beta Inc' ELSE 'Gamma' END), 'a moved link keeps its mention');
SELECT is((SELECT merged_into FROM sigledger.entities WHERE id = :'beta'), :'acme'::uuid, 'source keeps a tombstone');
SELECT is((SELECT (target_id, source_ids) FROM sigledger.entity_merges),
          (:'acme'::uuid, ARRAY[:'beta', :'gamma']::uuid[]), 'entity_merges history row');
SELECT is((SELECT count(*)::int FROM sigledger.merge_history WHERE kind = 'entity'), 1, 'merge_history shows it');
SELECT is((SELECT count(*)::int FROM sigledger.outbox WHERE event_type = 'entity.merged'), 2, 'entity.merged per source');
SELECT is((SELECT count(*)::int FROM sigledger.entity_signals_of(:'gamma')), 2, 'entity_signals_of follows the tombstone');

-- merge_entities errors, nothing changed
SELECT throws_ok(format('SELECT * FROM sigledger.merge_entities(%L, %L)', :'beta', ARRAY[:'acme']), 'SLM01', NULL, 'tombstone target: SLM01');
SELECT throws_matching(format('SELECT * FROM sigledger.merge_entities(%L, %L)', :'acme', ARRAY[:'gamma']),
                       'entity ' || :'gamma' || ' is a tombstone: it was merged into ' || :'acme', 'SLM01 names the tombstone');
SELECT throws_ok(format('SELECT * FROM sigledger.merge_entities(%L, %L)', :'acme', ARRAY[:'acme']), 'SLM02', NULL, 'target among sources: SLM02');
SELECT throws_ok(format('SELECT * FROM sigledger.merge_entities(%L, %L)', :'acme', '{}'), 'SLM02', NULL, 'empty sources: SLM02');
SELECT throws_ok(format('SELECT * FROM sigledger.merge_entities(%L, %L)', :'acme', ARRAY[gen_random_uuid()]), 'P0002', NULL, 'unknown source: P0002');
SELECT throws_ok(format('SELECT sigledger.add_alias(%L, %L)', :'beta', 'new'), 'SLM01', NULL, 'alias on a tombstone: SLM01');

-- backstops: even the owner cannot point a link or an alias at a tombstone
SELECT throws_ok(format('INSERT INTO sigledger.signal_entities (signal_id, entity_id) VALUES (%L, %L)', :'s1', :'beta'),
                 'SLM01', NULL, 'direct link to a tombstone entity: SLM01');
SELECT throws_ok(format('INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id) VALUES (%L, %L)', 'zzz', :'beta'),
                 'SLM01', NULL, 'direct alias to a tombstone entity: SLM01');
SELECT throws_ok(format('UPDATE sigledger.entities SET merged_into = %L, merged_at = NULL WHERE id = %L', :'acme', :'acme'),
                 '23514', NULL, 'entity cannot be merged into itself (check)');
SELECT is((SELECT count(*)::int FROM sigledger.entity_merges), 1, 'failed merges wrote no history');

SELECT * FROM finish();
