-- pgTAP: ingest_signal / ingest_signals (issue 4). Runs in a fresh clone, inside a rolled-back transaction.
SELECT plan(48);

-- signatures and hardening
SELECT has_function('sigledger', 'ingest_signal', ARRAY['text', 'text', 'timestamp with time zone', 'jsonb', 'text[]', 'text', 'text']);
SELECT has_function('sigledger', 'ingest_signals', ARRAY['jsonb', 'text']);
SELECT is_definer('sigledger', 'ingest_signal', ARRAY['text', 'text', 'timestamp with time zone', 'jsonb', 'text[]', 'text', 'text']);
SELECT is_definer('sigledger', 'ingest_signals', ARRAY['jsonb', 'text']);
SELECT ok((SELECT proconfig @> ARRAY['search_path=sigledger, pg_temp'] FROM pg_proc
            WHERE oid = 'sigledger.ingest_signals(jsonb, text)'::regprocedure), 'ingest_signals pins search_path');
SELECT ok(obj_description('sigledger.ingest_signal(text, text, timestamptz, jsonb, text[], text, text)'::regprocedure, 'pg_proc') ~ 'SQLSTATE: ',
          'ingest_signal is documented with its SQLSTATEs');

-- one signal: created, then idempotent
CREATE TEMP TABLE r1 AS SELECT * FROM sigledger.ingest_signal('rss', 'a-1', '2026-01-01 10:00+00', '{"title": "x"}', ARRAY['Acme Corp', 'Beta'], 'body text');
SELECT is((SELECT created FROM r1), true, 'first ingest creates the signal');
SELECT is((SELECT linked_entities FROM r1), 2, 'both mentions are linked');
SELECT is((SELECT count(*)::int FROM sigledger.entities), 2, 'unknown mentions created entities (policy create)');
SELECT is((SELECT count(*)::int FROM sigledger.signal_entities WHERE signal_id = (SELECT signal_id FROM r1)), 2, 'two signal_entities rows');
SELECT is((SELECT array_agg(mention ORDER BY mention) FROM sigledger.signal_entities WHERE signal_id = (SELECT signal_id FROM r1)),
          ARRAY['Acme Corp', 'Beta'], 'links keep the mention as written');
SELECT is((SELECT content FROM sigledger.signals WHERE id = (SELECT signal_id FROM r1)), 'body text', 'content stored');
CREATE TEMP TABLE r2 AS SELECT * FROM sigledger.ingest_signal('rss', 'a-1', '2030-01-01', '{"title": "changed"}', ARRAY['Gamma']);
SELECT is((SELECT created FROM r2), false, 'replay of (source, external_id) is not created');
SELECT is((SELECT signal_id FROM r2), (SELECT signal_id FROM r1), 'replay returns the existing signal id');
SELECT is((SELECT payload->>'title' FROM sigledger.signals WHERE id = (SELECT signal_id FROM r1)), 'x', 'replay changes nothing');
SELECT is((SELECT count(*)::int FROM sigledger.entities WHERE name = 'Gamma'), 0, 'replay resolves no mention');
SELECT is((SELECT count(*)::int FROM sigledger.signals), 1, 'still one signal');

-- resolution is case-insensitive and ignores surrounding blanks
CREATE TEMP TABLE r3 AS SELECT * FROM sigledger.ingest_signal('rss', 'a-2', '2026-01-02', '{}', ARRAY['  ACME corp ', 'acme CORP']);
SELECT is((SELECT linked_entities FROM r3), 1, 'two spellings of one alias link once');
SELECT is((SELECT entity_id FROM sigledger.signal_entities WHERE signal_id = (SELECT signal_id FROM r3)),
          sigledger.resolve_entity('Acme Corp'), 'the mention resolved to the existing entity');
SELECT is((SELECT count(*)::int FROM sigledger.entities), 2, 'no new entity for a known alias');

-- outbox rows in the same transaction
SELECT is((SELECT count(*)::int FROM sigledger.outbox WHERE event_type = 'signal.ingested'), 2, 'one signal.ingested per created signal');
SELECT is((SELECT count(*)::int FROM sigledger.outbox WHERE event_type = 'entity.created'), 2, 'one entity.created per new entity');
SELECT is((SELECT jsonb_array_length(payload->'entity_ids') FROM sigledger.outbox
            WHERE event_type = 'signal.ingested' AND aggregate_id = (SELECT signal_id FROM r1)), 2,
          'signal.ingested carries the linked entity ids');

-- review policy: unknown mentions are queued, not created
CREATE TEMP TABLE r4 AS SELECT * FROM sigledger.ingest_signal('rss', 'a-3', '2026-01-03', '{}', ARRAY['beta', 'Delta Ltd'], p_unknown_policy => 'review');
SELECT is((SELECT (linked_entities, queued_mentions) FROM r4), (1, 1), 'review: known linked, unknown queued');
SELECT is((SELECT mention FROM sigledger.entity_review_queue), 'Delta Ltd', 'the queue holds the unknown mention');
SELECT is((SELECT count(*)::int FROM sigledger.entities WHERE name = 'Delta Ltd'), 0, 'review: no entity created');
UPDATE sigledger.ingest_settings SET unknown_entity_policy = 'review';
SELECT is((SELECT queued_mentions FROM sigledger.ingest_signal('rss', 'a-4', '2026-01-04', '{}', ARRAY['Epsilon'])), 1,
          'the settings row decides when no policy is passed');
UPDATE sigledger.ingest_settings SET unknown_entity_policy = 'create';

-- errors, by SQLSTATE
SELECT throws_ok($$SELECT * FROM sigledger.ingest_signal('', 'x', now())$$, '22023', NULL, 'blank source: 22023');
SELECT throws_ok($$SELECT * FROM sigledger.ingest_signal('rss', NULL, now())$$, '22023', NULL, 'NULL external_id: 22023');
SELECT throws_ok($$SELECT * FROM sigledger.ingest_signal('rss', 'x', NULL)$$, '22023', NULL, 'NULL occurred_at: 22023');
SELECT throws_ok($$SELECT * FROM sigledger.ingest_signal('rss', 'x', 'infinity')$$, '22023', NULL, 'infinite occurred_at: 22023');
SELECT throws_ok($$SELECT * FROM sigledger.ingest_signal('rss', 'x', now(), '[1]')$$, '22023', NULL, 'payload not an object: 22023');
SELECT throws_ok($$SELECT * FROM sigledger.ingest_signal('rss', 'x', now(), '{}', ARRAY['a', NULL])$$, '22023', NULL, 'NULL mention: 22023');
SELECT throws_ok($$SELECT * FROM sigledger.ingest_signal('rss', 'x', now(), '{}', ARRAY['  '])$$, '22023', NULL, 'blank mention: 22023');
SELECT throws_ok($$SELECT * FROM sigledger.ingest_signal('rss', 'x', now(), p_unknown_policy => 'maybe')$$, '22023', NULL, 'bad policy: 22023');
SELECT throws_ok($$SELECT * FROM sigledger.ingest_signal('rss', 'x', '1999-12-31')$$, '22023', NULL, 'occurred_at before 2000: 22023');
SELECT throws_ok($$SELECT * FROM sigledger.ingest_signals('{"a": 1}')$$, '22023', NULL, 'batch not an array: 22023');
SELECT throws_ok($$SELECT * FROM sigledger.ingest_signals((SELECT jsonb_agg(i) FROM generate_series(1, 10001) i))$$,
                 '22023', NULL, 'batch over 10000 items: 22023');

-- batch: per-item status, a bad item never stops the rest
CREATE TEMP TABLE rb AS SELECT * FROM sigledger.ingest_signals($$[
  {"source": "web", "external_id": "1", "occurred_at": "2026-02-01T00:00:00Z", "mentions": ["Acme Corp", "Zeta"]},
  {"source": "web", "external_id": "1", "occurred_at": "2026-02-01T00:00:00Z"},
  {"source": "web", "external_id": "2", "occurred_at": "not a date"},
  "oops",
  {"source": "web", "external_id": 3, "occurred_at": "2026-02-03", "payload": [], "mentions": []},
  {"source": "web", "external_id": "4", "occurred_at": "2026-02-04", "mentions": "Acme"},
  {"source": "rss", "external_id": "a-1", "occurred_at": "2026-02-05"},
  {"source": "web", "external_id": 5, "occurred_at": "2026-02-05", "mentions": ["zeta", "Eta"]}
]$$);
SELECT is((SELECT array_agg(status ORDER BY item) FROM rb),
          ARRAY['created', 'duplicate', 'rejected', 'rejected', 'rejected', 'rejected', 'duplicate', 'created'],
          'batch statuses in input order');
SELECT is((SELECT reason FROM rb WHERE item = 3), 'occurred_at is not a valid timestamp: not a date', 'reason names the bad value');
SELECT is((SELECT reason FROM rb WHERE item = 4), 'item is not a JSON object', 'non-object item rejected');
SELECT is((SELECT reason FROM rb WHERE item = 5), 'payload must be a JSON object', 'array payload rejected');
SELECT is((SELECT reason FROM rb WHERE item = 6), 'mentions must be a JSON array of strings', 'string mentions rejected');
SELECT is((SELECT signal_id FROM rb WHERE item = 2), (SELECT signal_id FROM rb WHERE item = 1), 'in-batch duplicate maps to the first');
SELECT is((SELECT signal_id FROM rb WHERE item = 7), (SELECT signal_id FROM r1), 'duplicate of an earlier call maps to it');
SELECT is((SELECT linked_entities FROM rb WHERE item = 8), 2, 'numeric external_id accepted, both mentions linked');
SELECT is((SELECT count(*)::int FROM sigledger.entities WHERE lower(name) = 'zeta'), 1, 'one entity for a name used twice in a batch');

CREATE TEMP TABLE rn AS SELECT * FROM sigledger.ingest_signal('rss', 'nulls', now(), '{"a": null, "b": {"c": null}}');
SELECT is((SELECT payload FROM sigledger.signals WHERE id = (SELECT signal_id FROM rn)),
          '{"a": null, "b": {"c": null}}'::jsonb, 'JSON nulls inside the payload are kept');

SELECT * FROM finish();
