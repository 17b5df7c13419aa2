-- pgTAP: the outbox delivery functions of the Neo4j projection (claim, fail with backoff, dead, retry, purge,
-- snapshot). Runs in one transaction (rolled back), so claims here never contend.
BEGIN;
SELECT plan(22);

SELECT has_function('sigledger', '_graph_claim', ARRAY['integer']);
SELECT has_function('sigledger', '_graph_snapshot', ARRAY['text[]', 'uuid[]']);
SELECT has_function('sigledger', 'graph_outbox_status', ARRAY[]::text[]);
SELECT has_sequence('sigledger', 'graph_sync_version_seq', 'sync versions come from a sequence');

SELECT throws_ok($$SELECT * FROM sigledger._graph_claim(0)$$, '22023', NULL, 'batch size 0 is rejected');
SELECT throws_ok($$SELECT * FROM sigledger._graph_fail(ARRAY[1]::bigint[], 'x', 0)$$, '22023', NULL,
                 'max attempts 0 is rejected');
SELECT throws_ok($$SELECT sigledger._graph_enqueue('widget', ARRAY[gen_random_uuid()])$$, '22023', NULL,
                 'an unknown aggregate type is rejected');

INSERT INTO sigledger.opportunities (id, title) VALUES
    ('00000000-0000-4000-8000-0000000000a1', 'winner'),
    ('00000000-0000-4000-8000-0000000000a2', 'loser');
UPDATE sigledger.opportunities SET status = 'merged', merged_into = '00000000-0000-4000-8000-0000000000a1',
       merged_at = now() WHERE id = '00000000-0000-4000-8000-0000000000a2';
SELECT sigledger._outbox_emit('opportunity', '00000000-0000-4000-8000-0000000000a1', 'created');
SELECT sigledger._outbox_emit('opportunity', '00000000-0000-4000-8000-0000000000a1', 'updated');
SELECT sigledger._outbox_emit('opportunity', '00000000-0000-4000-8000-0000000000a2', 'merged');
SELECT sigledger._outbox_emit('signal', '00000000-0000-4000-8000-0000000000ff', 'deleted');

SELECT is((SELECT count(*) FROM sigledger._graph_claim(10)), 4::bigint, 'all four due rows are claimed');
SELECT is((SELECT pending FROM sigledger.graph_outbox_status()), 4::bigint, 'four pending');

-- Snapshot: present, merged loser (absent + winner), gone (absent), versions taken once per call.
CREATE TEMP TABLE snap AS
SELECT * FROM sigledger._graph_snapshot(
    ARRAY['opportunity', 'opportunity', 'signal'],
    ARRAY['00000000-0000-4000-8000-0000000000a1', '00000000-0000-4000-8000-0000000000a2',
          '00000000-0000-4000-8000-0000000000ff']::uuid[]);
SELECT is((SELECT state FROM snap WHERE aggregate_id = '00000000-0000-4000-8000-0000000000a1'), 'present');
SELECT is((SELECT state || ' ' || winner_id FROM snap WHERE aggregate_id = '00000000-0000-4000-8000-0000000000a2'),
          'absent 00000000-0000-4000-8000-0000000000a1', 'a merged loser points at its winner');
SELECT is((SELECT state FROM snap WHERE aggregate_id = '00000000-0000-4000-8000-0000000000ff'), 'absent',
          'a missing row is a delete');
SELECT is((SELECT count(DISTINCT version) FROM snap), 1::bigint, 'one version per snapshot');
SELECT ok((SELECT NOT props ? 'merged_into' AND props->>'title' = 'winner' FROM snap
            WHERE aggregate_id = '00000000-0000-4000-8000-0000000000a1'), 'props: columns, no tombstone fields');
SELECT ok((SELECT max(version) FROM sigledger._graph_snapshot(ARRAY['signal'], ARRAY[gen_random_uuid()]))
          > (SELECT max(version) FROM snap), 'a later snapshot has a larger version');

-- Fail: backoff into the future, dead at max attempts, dead rows are not claimed, retry and purge.
SELECT is((SELECT dead FROM sigledger._graph_fail(
              ARRAY(SELECT id FROM sigledger.outbox WHERE event_type = 'deleted'), 'boom', 2, '1 hour', '2 hours')),
          false, 'first failure: not dead yet');
SELECT ok((SELECT next_attempt_at > clock_timestamp() + interval '29 minutes' FROM sigledger.outbox
            WHERE event_type = 'deleted'), 'backoff: base 1 h with jitter in [0.5, 1)');
SELECT is((SELECT dead FROM sigledger._graph_fail(
              ARRAY(SELECT id FROM sigledger.outbox WHERE event_type = 'deleted'), 'boom again', 2)),
          true, 'second failure at max attempts 2: dead');
SELECT is((SELECT count(*) FROM sigledger._graph_claim(10) c
            WHERE c.event_type = 'deleted'), 0::bigint, 'a dead row is never claimed');
SELECT is((SELECT dead FROM sigledger.graph_outbox_status()), 1::bigint, 'status counts it dead');
SELECT is(sigledger._graph_dead_retry(), 1, 'retry makes it due again');
SELECT is((SELECT attempts FROM sigledger.outbox WHERE event_type = 'deleted'), 0::bigint, 'attempts reset');

SELECT * FROM finish();
ROLLBACK;
