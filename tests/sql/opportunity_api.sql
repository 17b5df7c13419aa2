-- pgTAP: create_opportunity, link_signals, merge_opportunities, read API, backstops (issue 4).
SELECT plan(57);

SELECT has_function('sigledger', 'create_opportunity', ARRAY['text', 'text', 'text', 'numeric', 'numeric', 'jsonb']);
SELECT has_function('sigledger', 'link_signals', ARRAY['uuid', 'uuid[]']);
SELECT has_function('sigledger', 'merge_opportunities', ARRAY['uuid', 'uuid[]']);
SELECT has_function('sigledger', 'opportunity_signals_of', ARRAY['uuid']);
SELECT is_definer('sigledger', 'merge_opportunities', ARRAY['uuid', 'uuid[]']);
SELECT ok((SELECT proconfig @> ARRAY['lock_timeout=10s'] FROM pg_proc WHERE oid = 'sigledger.merge_opportunities(uuid, uuid[])'::regprocedure),
          'merge_opportunities bounds its lock waits');
SELECT has_view('sigledger', 'opportunity_signal_links', 'opportunity_signal_links view');
SELECT has_view('sigledger', 'merge_history', 'merge_history view');

-- create_opportunity
SELECT sigledger.create_opportunity('  Target ', NULL, 'won', 3, 1000, '{"k": "t", "only_t": 1}') AS t \gset
SELECT sigledger.create_opportunity('Source one', 'first description', 'open', 7.5, NULL, '{"k": "s1", "x": 1}') AS s1 \gset
SELECT sigledger.create_opportunity('Source two', 'second description', 'lost', NULL, 2500.50, '{"x": 2, "y": 2}') AS s2 \gset
UPDATE sigledger.opportunities SET created_at = '2020-01-01' WHERE id = :'s2';
SELECT is((SELECT title FROM sigledger.opportunities WHERE id = :'t'), 'Target', 'title trimmed');
SELECT is((SELECT count(*)::int FROM sigledger.outbox WHERE event_type = 'opportunity.created'), 3, 'opportunity.created outbox rows');
SELECT throws_ok($$SELECT sigledger.create_opportunity(' ')$$, '22023', NULL, 'blank title: 22023');
SELECT throws_ok($$SELECT sigledger.create_opportunity('x', NULL, 'maybe')$$, '22023', NULL, 'unknown status: 22023');
SELECT throws_ok($$SELECT sigledger.create_opportunity('x', NULL, 'open', 'NaN')$$, '22003', NULL, 'NaN score: 22003');
SELECT throws_ok($$SELECT sigledger.create_opportunity('x', NULL, 'open', -1)$$, '22003', NULL, 'negative score: 22003');
SELECT throws_ok($$SELECT sigledger.create_opportunity('x', NULL, 'open', 100.5)$$, '22003', NULL, 'score over 100: 22003');
SELECT throws_ok($$SELECT sigledger.create_opportunity('x', NULL, 'open', NULL, 'NaN')$$, '22003', NULL, 'NaN value_usd: 22003');
SELECT throws_ok($$SELECT sigledger.create_opportunity('x', NULL, 'merged')$$, '22023', NULL, 'status merged is reserved: 22023');
SELECT throws_ok($$SELECT sigledger.create_opportunity('x', NULL, 'open', NULL, NULL, '[]')$$, '22023', NULL, 'attributes not an object: 22023');
SELECT throws_ok($$INSERT INTO sigledger.opportunities (title, score) VALUES ('direct', 'NaN')$$, '23514', NULL,
                 'NaN score refused by the check constraint too');

-- signals to link
SELECT array_agg(signal_id ORDER BY item) AS sig FROM sigledger.ingest_signals(
    (SELECT jsonb_agg(jsonb_build_object('source', 'src', 'external_id', i, 'occurred_at', '2026-01-01'::timestamptz + i * interval '1 day'))
       FROM generate_series(1, 5) i)) \gset
-- t: s[1], s[2]; s1: s[2], s[3]; s2: s[3], s[4]
SELECT is((SELECT (linked, already_linked) FROM sigledger.link_signals(:'t', ARRAY[(:'sig'::uuid[])[1], (:'sig'::uuid[])[2], (:'sig'::uuid[])[1]])),
          (2, 0), 'link_signals links each signal once');
SELECT is((SELECT (linked, already_linked) FROM sigledger.link_signals(:'t', ARRAY[(:'sig'::uuid[])[2]])), (0, 1), 'relink counted as already linked');
SELECT lives_ok(format('SELECT sigledger.link_signals(%L, %L)', :'s1', (:'sig'::uuid[])[2:3]), 'link to source one');
SELECT lives_ok(format('SELECT sigledger.link_signals(%L, %L)', :'s2', (:'sig'::uuid[])[3:4]), 'link to source two');
SELECT throws_ok(format('SELECT sigledger.link_signals(%L, %L)', gen_random_uuid(), (:'sig'::uuid[])[1:1]), 'P0002', NULL, 'unknown opportunity: P0002');
SELECT throws_ok(format('SELECT sigledger.link_signals(%L, %L)', :'t', ARRAY[gen_random_uuid()]), 'P0002', NULL, 'unknown signal: P0002');
SELECT throws_ok(format('SELECT sigledger.link_signals(%L, %L)', :'t', '{}'), '22023', NULL, 'empty signal list: 22023');
SELECT throws_ok(format('SELECT sigledger.link_signals(%L, %L)', :'t', ARRAY[NULL::uuid]), '22023', NULL, 'NULL signal: 22023');

-- merge errors first: each changes nothing
CREATE TEMP TABLE before_rows AS SELECT * FROM sigledger.opportunities;
CREATE TEMP TABLE before_links AS SELECT opportunity_id, signal_id FROM sigledger.opportunity_signals;
SELECT throws_ok(format('SELECT * FROM sigledger.merge_opportunities(%L, %L)', :'t', ARRAY[:'s1', :'t']), 'SLM02', NULL, 'target among sources: SLM02');
SELECT throws_ok(format('SELECT * FROM sigledger.merge_opportunities(%L, %L)', :'t', '{}'), 'SLM02', NULL, 'empty list: SLM02');
SELECT throws_ok(format('SELECT * FROM sigledger.merge_opportunities(%L, NULL)', :'t'), 'SLM02', NULL, 'NULL list: SLM02');
SELECT throws_ok(format('SELECT * FROM sigledger.merge_opportunities(NULL, %L)', ARRAY[:'s1']), 'SLM02', NULL, 'NULL target: SLM02');
SELECT throws_ok(format('SELECT * FROM sigledger.merge_opportunities(%L, %L)', :'t', ARRAY[:'s1', :'s1']), 'SLM02', NULL, 'duplicate source: SLM02');
SELECT throws_ok(format('SELECT * FROM sigledger.merge_opportunities(%L, %L)', :'t', ARRAY[:'s1', gen_random_uuid()]), 'P0002', NULL, 'unknown source: P0002');
SELECT throws_ok(format('SELECT * FROM sigledger.merge_opportunities(%L, %L)', gen_random_uuid(), ARRAY[:'s1']), 'P0002', NULL, 'unknown target: P0002');
SELECT is((SELECT count(*)::int FROM (SELECT * FROM sigledger.opportunities EXCEPT SELECT * FROM before_rows) d), 0, 'rejected merges changed no opportunity');
SELECT bag_eq('SELECT opportunity_id, signal_id FROM sigledger.opportunity_signals', 'SELECT * FROM before_links', 'rejected merges moved no link');

-- the merge
SET application_name = 'pgtap-merge';
CREATE TEMP TABLE m AS SELECT * FROM sigledger.merge_opportunities(:'t', ARRAY[:'s2', :'s1']::uuid[]);
-- source links: (s1, sig2) (s1, sig3) (s2, sig3) (s2, sig4); the target had sig2: sig3 and sig4 move
SELECT is((SELECT (moved_links, duplicate_links) FROM m), (2, 2), 'two links moved, two were duplicates');
SELECT bag_eq(format('SELECT signal_id FROM sigledger.opportunity_signals WHERE opportunity_id = %L', :'t'),
              format('SELECT unnest(%L::uuid[])', (:'sig'::uuid[])[1:4]), 'the target holds every signal once');
SELECT is((SELECT count(*)::int FROM sigledger.opportunity_signals WHERE opportunity_id IN (:'s1', :'s2')), 0, 'sources hold no link');
SELECT is((SELECT array_agg(merged_into) FROM sigledger.opportunities WHERE id IN (:'s1', :'s2')), ARRAY[:'t'::uuid, :'t'::uuid], 'tombstones point at the target');
SELECT is((SELECT array_agg(DISTINCT status) FROM sigledger.opportunities WHERE id IN (:'s1', :'s2')), ARRAY['merged'], 'tombstones have status merged');
SELECT is((SELECT version FROM sigledger.opportunities WHERE id = :'t'), 2::bigint, 'the target''s version is bumped');
-- field rules (docs/merge-rules.md)
SELECT is((SELECT title || '/' || status FROM sigledger.opportunities WHERE id = :'t'), 'Target/won', 'title and status stay the target''s');
SELECT is((SELECT description FROM sigledger.opportunities WHERE id = :'t'),
          (SELECT description FROM sigledger.opportunities WHERE id = least(:'s1'::uuid, :'s2'::uuid)), 'empty description taken from the first source in id order');
SELECT is((SELECT score FROM sigledger.opportunities WHERE id = :'t'), 7.5, 'score is the maximum');
SELECT is((SELECT value_usd FROM sigledger.opportunities WHERE id = :'t'), 2500.50, 'value_usd is the maximum');
SELECT is((SELECT attributes->'k' FROM sigledger.opportunities WHERE id = :'t'), '"t"'::jsonb, 'attributes: the target wins a key');
SELECT is((SELECT attributes - 'k' FROM sigledger.opportunities WHERE id = :'t'),
          jsonb_build_object('only_t', 1, 'y', 2, 'x', CASE WHEN :'s1'::uuid > :'s2'::uuid THEN 1 ELSE 2 END),
          'attributes: sources fill missing keys, the later source id wins among them');
SELECT is((SELECT created_at FROM sigledger.opportunities WHERE id = :'t'), '2020-01-01'::timestamptz, 'created_at is the earliest');
-- history and outbox
SELECT is((SELECT (source_ids, merged_by, application_name) FROM sigledger.opportunity_merges),
          (ARRAY[:'s2', :'s1']::uuid[], session_user::text COLLATE "default", 'pgtap-merge'::text COLLATE "default"), 'history: sources, role, application');
SELECT is((SELECT target_before->>'score' FROM sigledger.opportunity_merges), '3.0000', 'history keeps the target as it was');
SELECT is((SELECT count(*)::int FROM sigledger.outbox WHERE event_type = 'opportunity.merged'), 2, 'opportunity.merged per source');
-- after the merge
SELECT throws_matching(format('SELECT * FROM sigledger.merge_opportunities(%L, %L)', :'s1', ARRAY[:'t']),
                       'opportunity ' || :'s1' || ' is a tombstone: it was merged into ' || :'t', 'merging into a tombstone: SLM01 names it');
SELECT throws_ok(format('SELECT * FROM sigledger.merge_opportunities(%L, %L)', :'t', ARRAY[:'s2']), 'SLM01', NULL, 'merging a tombstone again: SLM01');
SELECT is((SELECT opportunity_id FROM sigledger.link_signals(:'s1', ARRAY[(:'sig'::uuid[])[5]])), :'t'::uuid, 'a link to a tombstone lands on its target');
SELECT is((SELECT count(*)::int FROM sigledger.opportunity_signals_of(:'s2')), 5, 'opportunity_signals_of follows the tombstone');
SELECT throws_ok(format('INSERT INTO sigledger.opportunity_signals (opportunity_id, signal_id) VALUES (%L, %L)', :'s1', (:'sig'::uuid[])[5]),
                 'SLM01', NULL, 'direct link to a tombstone: SLM01 (backstop)');

SELECT * FROM finish();
