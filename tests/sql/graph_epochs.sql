-- pgTAP: what the projection's design rests on in Postgres (docs/graph.md): merge_entities emits an event for
-- every signal whose links it moves; the graph identity and its epochs; the verify hold.
BEGIN;
SELECT plan(17);

SELECT has_function('sigledger', '_graph_identity', ARRAY[]::text[]);
SELECT has_function('sigledger', '_graph_adopt', ARRAY['bigint']);
SELECT has_function('sigledger', '_graph_hold', ARRAY['text[]', 'uuid[]']);

-- merge_entities: one signal.relinked event per distinct signal linked to a source.
CREATE TEMP TABLE ids AS
SELECT sigledger.create_entity('Winner') AS w, sigledger.create_entity('Loser A') AS a,
       sigledger.create_entity('Loser B') AS b, sigledger.create_entity('Bystander') AS x;
SELECT sigledger.ingest_signal('t', 'to-a', now(), '{}', ARRAY['Loser A']);
SELECT sigledger.ingest_signal('t', 'to-a-and-b', now(), '{}', ARRAY['Loser A', 'Loser B']);
SELECT sigledger.ingest_signal('t', 'to-a-and-w', now(), '{}', ARRAY['Loser A', 'Winner']);
SELECT sigledger.ingest_signal('t', 'to-x', now(), '{}', ARRAY['Bystander']);
DELETE FROM sigledger.outbox;
SELECT * FROM sigledger.merge_entities((SELECT w FROM ids), ARRAY[(SELECT a FROM ids), (SELECT b FROM ids)]);
SELECT bag_eq(
    $$SELECT aggregate_id FROM sigledger.outbox WHERE event_type = 'signal.relinked'$$,
    $$SELECT id FROM sigledger.signals WHERE external_id IN ('to-a', 'to-a-and-b', 'to-a-and-w')$$,
    'every signal linked to a source gets one event; the others none');
SELECT is((SELECT count(*)::int FROM sigledger.outbox WHERE aggregate_type = 'entity'), 3,
          'and the sources and the target theirs');

-- Identity: drawn once, then stable.
SELECT is((SELECT count(*)::int FROM sigledger.graph_projection), 0, 'no identity before the first sync');
CREATE TEMP TABLE first AS SELECT * FROM sigledger._graph_identity();
SELECT is((SELECT epoch FROM first), 1::bigint, 'epoch 1');
SELECT is((SELECT database_id FROM sigledger._graph_identity()), (SELECT database_id FROM first), 'stable');
SELECT is(sigledger._graph_mark_written(1), true, 'a graph holds epoch 1');
SELECT is((SELECT written FROM sigledger._graph_identity()), true, 'written');

-- Adopt: the next epoch, the sequence above the graph's highest version.
SELECT throws_ok($$SELECT * FROM sigledger._graph_adopt(-1)$$, '22023', NULL, 'a negative version is rejected');
CREATE TEMP TABLE adopted AS SELECT * FROM sigledger._graph_adopt(1000000);
SELECT is((SELECT epoch FROM adopted), 2::bigint, 'epoch 2');
SELECT is((SELECT floor_version FROM adopted), 1000001::bigint, 'floor above the graph');
SELECT cmp_ok(nextval('sigledger.graph_sync_version_seq'), '>', 1000001::bigint, 'versions go on above it');

-- Hold: the projection lock of each aggregate, and its outbox rows.
SELECT throws_ok($$SELECT * FROM sigledger._graph_hold(ARRAY['signal'], ARRAY[]::uuid[])$$, '22023', NULL,
                 'arrays of different lengths are rejected');
SELECT results_eq(
    $$SELECT held, pending, dead FROM sigledger._graph_hold(ARRAY['signal'],
        ARRAY[(SELECT id FROM sigledger.signals WHERE external_id = 'to-a')])$$,
    $$VALUES (true, 1::bigint, 0::bigint)$$,
    'held, with its pending row');
SELECT ok(pg_try_advisory_xact_lock(hashtext('sigledger.graph'),
          hashtext('signal:' || (SELECT id FROM sigledger.signals WHERE external_id = 'to-a')::text)),
          'the same lock a worker takes (re-entrant here, in the holding transaction)');

SELECT * FROM finish();
ROLLBACK;
