-- 220 ingestion: ingest_signals (set-based batch) and ingest_signal (one signal, same code path).
--
-- Item: {source, external_id, occurred_at, payload?: object, content?: string, mentions?: [name, ...]}.
-- Per item: validated (a bad item is rejected with a reason, the others go on); inserted once per
-- (source, external_id) (signals_source_external_id_key decides a race); a replay is a 'duplicate' and
-- changes nothing; mentions resolve through entity_aliases by alias_key (_text_key); unknown mentions create an
-- entity (policy 'create') or go to entity_review_queue (policy 'review'); links land in signal_entities;
-- outbox rows are written in the same transaction.
-- Lock order inside a call, the same for every caller: signal keys sorted, then alias keys sorted, then
-- entity rows (FOR KEY SHARE) in id order. Two calls therefore never wait on each other in a cycle
-- (provided each runs in its own transaction).

-- The result gained a sqlstate column (issue 11): a function's result type cannot be changed in place.
DO $drop$
BEGIN
    IF to_regprocedure('sigledger.ingest_signals(jsonb, text)') IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_proc WHERE oid = to_regprocedure('sigledger.ingest_signals(jsonb, text)')
                                               AND 'sqlstate' = ANY (proargnames)) THEN
        DROP FUNCTION sigledger.ingest_signals(jsonb, text);
        DROP FUNCTION sigledger._ingest(jsonb, text);
    END IF;
END
$drop$;

CREATE OR REPLACE FUNCTION sigledger._ingest(p_batch jsonb, p_unknown_policy text)
RETURNS TABLE (item integer, signal_id uuid, status text, reason text, linked_entities integer, queued_mentions integer,
               sqlstate text)
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_policy text;
    v_item integer[];
    v_source text[];
    v_external text[];
    v_occurred timestamptz[];
    v_payload jsonb[];
    v_content text[];
    v_mentions jsonb[];
    v_reason text[];
    v_new_sig uuid[];
    v_sig uuid[];
    v_created boolean[];
    -- (item, signal, key, spelling) for every distinct mention of a created signal
    v_p_item integer[];
    v_p_sig uuid[];
    v_p_key text[];
    v_p_name text[];
    v_losers uuid[];
    v_new_entities uuid[];
    v_res_key text[];
    v_res_ent uuid[];
    v_head_of_id uuid[];
    v_head uuid[];
BEGIN
    IF p_batch IS NULL OR jsonb_typeof(p_batch) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('batch must be a JSON array, got %s', coalesce(jsonb_typeof(p_batch), 'NULL'));
    END IF;
    IF jsonb_array_length(p_batch) > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('batch holds %s items, the limit is 10000', jsonb_array_length(p_batch)),
            HINT = 'Split the batch.';
    END IF;
    v_policy := coalesce(p_unknown_policy, (SELECT s.unknown_entity_policy FROM sigledger.ingest_settings s));
    IF v_policy IS NULL OR v_policy NOT IN ('create', 'review') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('unknown-entity policy must be ''create'' or ''review'', got %s', _text_quote(v_policy));
    END IF;

    -- 1. parse and validate every item; the first reason that applies wins. A reason is written
    --    'SQLSTATE text' here and split in the result (one array instead of two kept in step). Text fields pass
    --    the text rules (_text_norm, 005): source at most 200 characters and 800 bytes, external_id 500 and
    --    1500 (together under the btree entry size of signals_source_external_id_key), content 1000000 and
    --    4000000, each mention 500 and 2000 (and a resolution key of at most 2400 bytes).
    SELECT array_agg(p.ord ORDER BY p.ord), array_agg(p.source ORDER BY p.ord), array_agg(p.external_id ORDER BY p.ord),
           array_agg(p.occurred_at ORDER BY p.ord), array_agg(p.payload ORDER BY p.ord), array_agg(p.mentions ORDER BY p.ord),
           array_agg(p.content ORDER BY p.ord), array_agg(p.why ORDER BY p.ord)
      INTO v_item, v_source, v_external, v_occurred, v_payload, v_mentions, v_content, v_reason
      FROM (SELECT e.ord::integer AS ord, src.value AS source, ext.value AS external_id, occ.value AS occurred_at,
                   coalesce(e.j -> 'payload', '{}') AS payload, coalesce(e.j -> 'mentions', '[]') AS mentions,
                   cnt.value AS content,
                   CASE
                       WHEN jsonb_typeof(e.j) IS DISTINCT FROM 'object' THEN '22023 item is not a JSON object'
                       WHEN coalesce(jsonb_typeof(e.j -> 'source'), 'null') = 'null' THEN '22023 source is missing'
                       WHEN jsonb_typeof(e.j -> 'source') <> 'string' THEN '22023 source must be a string'
                       WHEN src.error IS NOT NULL THEN '22023 ' || src.error
                       WHEN coalesce(jsonb_typeof(e.j -> 'external_id'), 'null') = 'null'
                           THEN '22023 external_id is missing'
                       WHEN jsonb_typeof(e.j -> 'external_id') NOT IN ('string', 'number')
                           THEN '22023 external_id must be a string or a number'
                       WHEN ext.error IS NOT NULL THEN '22023 ' || ext.error
                       WHEN coalesce(jsonb_typeof(e.j -> 'occurred_at'), 'null') = 'null' THEN '22023 occurred_at is missing'
                       WHEN jsonb_typeof(e.j -> 'occurred_at') <> 'string' THEN '22023 occurred_at must be a string'
                       WHEN occ.error IS NOT NULL
                           THEN left(occ.error, 5) || ' occurred_at is not a valid timestamp: '
                                || CASE WHEN length(e.j ->> 'occurred_at') > 200
                                        THEN left(e.j ->> 'occurred_at', 200) || '...' ELSE e.j ->> 'occurred_at' END
                                || CASE WHEN left(occ.error, 5) <> '22007' THEN ' (' || substr(occ.error, 7) || ')' ELSE '' END
                       WHEN NOT (occ.value > '2000-01-01' AND occ.value < 'infinity')
                           THEN '22023 occurred_at must be after 2000-01-01 and finite, got ' || _text_quote(e.j ->> 'occurred_at')
                       WHEN coalesce(jsonb_typeof(e.j -> 'content'), 'null') NOT IN ('string', 'null')
                           THEN '22023 content must be a string'
                       WHEN cnt.error IS NOT NULL THEN '22023 ' || cnt.error
                       WHEN jsonb_typeof(e.j -> 'payload') <> 'object' THEN '22023 payload must be a JSON object'
                       WHEN jsonb_typeof(e.j -> 'mentions') <> 'array' THEN '22023 mentions must be a JSON array of strings'
                       WHEN jsonb_array_length(e.j -> 'mentions') > 200
                           THEN format('22023 mentions holds %s names, the limit is 200', jsonb_array_length(e.j -> 'mentions'))
                       WHEN men.error IS NOT NULL THEN '22023 ' || men.error
                   END AS why
              FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS e (j, ord)
              CROSS JOIN LATERAL sigledger._text_norm(
                  CASE WHEN jsonb_typeof(e.j -> 'source') = 'string' THEN e.j ->> 'source' END, 'source', 200, 800) AS src
              CROSS JOIN LATERAL sigledger._text_norm(
                  CASE WHEN jsonb_typeof(e.j -> 'external_id') IN ('string', 'number') THEN e.j ->> 'external_id' END,
                  'external_id', 500, 1500) AS ext
              CROSS JOIN LATERAL sigledger._try_timestamptz(
                  CASE WHEN jsonb_typeof(e.j -> 'occurred_at') = 'string' THEN e.j ->> 'occurred_at' END) AS occ
              CROSS JOIN LATERAL sigledger._text_norm(
                  CASE WHEN jsonb_typeof(e.j -> 'content') = 'string' THEN e.j ->> 'content' END,
                  'content', 1000000, 4000000, 'text') AS cnt
              CROSS JOIN LATERAL (SELECT (
                  SELECT format('mention %s: %s', m.o,
                                CASE WHEN jsonb_typeof(m.v) <> 'string' THEN 'must be a string'
                                     WHEN t.error IS NOT NULL THEN t.error
                                     ELSE 'its resolution key is longer than 2400 bytes' END)
                    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(e.j -> 'mentions') = 'array'
                                                    AND jsonb_array_length(e.j -> 'mentions') <= 200
                                                   THEN e.j -> 'mentions' END) WITH ORDINALITY AS m (v, o)
                    CROSS JOIN LATERAL sigledger._text_norm(
                        CASE WHEN jsonb_typeof(m.v) = 'string' THEN m.v #>> '{}' END, 'mention', 500, 2000) AS t
                   WHERE jsonb_typeof(m.v) <> 'string' OR t.error IS NOT NULL
                      -- NFKC expands a character at most 18-fold: only a long name can exceed the key's bound
                      OR (octet_length(t.value) > 133 AND octet_length(sigledger._text_key(t.value)) > 2400)
                   ORDER BY m.o LIMIT 1) AS error) AS men
           ) AS p;
    IF v_item IS NULL THEN
        RETURN;
    END IF;

    -- 2. insert the valid items, the first of each key in the batch, keys sorted (lock order, see top).
    WITH ins AS (
        INSERT INTO sigledger.signals (source, external_id, occurred_at, payload, content)
        SELECT DISTINCT ON (u.src, u.ext) u.src, u.ext, u.occ, u.pay, u.txt
          FROM unnest(v_item, v_source, v_external, v_occurred, v_payload, v_content, v_reason)
               AS u (it, src, ext, occ, pay, txt, why)
         WHERE u.why IS NULL
         ORDER BY u.src, u.ext, u.it
        ON CONFLICT (source, external_id) DO NOTHING
        RETURNING id)
    SELECT coalesce(array_agg(ins.id), '{}') INTO v_new_sig FROM ins;

    -- 3. every valid item's signal; 'created' = inserted by this call, and the first item of its key.
    SELECT array_agg(x.sid ORDER BY x.it), array_agg(x.created ORDER BY x.it) INTO v_sig, v_created
      FROM (SELECT u.it, s.id AS sid,
                   (n.id IS NOT NULL AND u.it = min(u.it) OVER (PARTITION BY u.src, u.ext, u.why IS NULL)) AS created
              FROM unnest(v_item, v_source, v_external, v_reason) AS u (it, src, ext, why)
              LEFT JOIN sigledger.signals s ON u.why IS NULL AND s.source = u.src AND s.external_id = u.ext
              LEFT JOIN unnest(v_new_sig) AS n (id) ON n.id = s.id) AS x;

    -- 4. the distinct mentions (by resolution key, _text_key) of each created signal, each in its canonical
    --    form; a replay links nothing.
    SELECT coalesce(array_agg(m.it ORDER BY m.k, m.it), '{}'), coalesce(array_agg(m.sid ORDER BY m.k, m.it), '{}'),
           coalesce(array_agg(m.k ORDER BY m.k, m.it), '{}'), coalesce(array_agg(m.nm ORDER BY m.k, m.it), '{}')
      INTO v_p_item, v_p_sig, v_p_key, v_p_name
      FROM (SELECT DISTINCT ON (u.it, c.k) u.it, u.sid, c.k, c.nm
              FROM unnest(v_item, v_sig, v_mentions, v_created) AS u (it, sid, men, cr)
              CROSS JOIN LATERAL jsonb_array_elements(u.men) WITH ORDINALITY AS j (v, o)
              CROSS JOIN LATERAL (SELECT n.nm, sigledger._text_key(n.nm) AS k
                                    FROM (SELECT sigledger._text_canon(j.v #>> '{}') AS nm) AS n) AS c
             WHERE u.cr
             ORDER BY u.it, c.k, j.o) AS m;

    -- 5. unknown names: create entity + alias (policy 'create'), aliases inserted in key order. A name that
    --    another session created meanwhile conflicts on the alias key: our entity for it is removed again.
    IF v_policy = 'create' AND cardinality(v_p_key) > 0 THEN
        WITH unknown AS (
                SELECT DISTINCT ON (p.k) p.k, p.nm
                  FROM unnest(v_p_key, v_p_name, v_p_item) AS p (k, nm, it)
                 WHERE NOT EXISTS (SELECT 1 FROM sigledger.entity_aliases a WHERE a.alias_key = p.k)
                 ORDER BY p.k, p.it),
             ne AS (
                INSERT INTO sigledger.entities (name) SELECT unknown.nm FROM unknown ORDER BY unknown.k
                RETURNING id, name),
             na AS (
                INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id)
                SELECT ne.name, ne.id FROM ne JOIN unknown ON unknown.nm = ne.name ORDER BY unknown.k
                ON CONFLICT (alias_key) DO NOTHING
                RETURNING canonical_entity_id)
        SELECT coalesce(array_agg(ne.id) FILTER (WHERE na.canonical_entity_id IS NULL), '{}'),
               coalesce(array_agg(ne.id) FILTER (WHERE na.canonical_entity_id IS NOT NULL), '{}')
          INTO v_losers, v_new_entities
          FROM ne LEFT JOIN na ON na.canonical_entity_id = ne.id;
        IF cardinality(v_losers) > 0 THEN
            DELETE FROM sigledger.entities WHERE id = ANY (v_losers);
        END IF;
        -- (only when some were created: an empty `id = ANY ('{}')` is false, which implies the predicate of every
        -- partial index, and the planner answered it by a scan of all tombstones: tests/core/test_index_plans.py)
        IF cardinality(v_new_entities) > 0 THEN
            PERFORM sigledger._outbox_emit('entity', e.id, 'entity.created',
                                           jsonb_build_object('name', e.name, 'aliases', jsonb_build_array(e.name)))
               FROM sigledger.entities e WHERE e.id = ANY (v_new_entities);
        END IF;
    END IF;

    -- 6. resolve every key; lock the live entities (FOR KEY SHARE, id order) so no merge can tombstone them
    --    under our links; a key resolved to an entity merged meanwhile links to its head.
    SELECT coalesce(array_agg(k.k ORDER BY k.k), '{}'), coalesce(array_agg(a.canonical_entity_id ORDER BY k.k), '{}')
      INTO v_res_key, v_res_ent
      FROM (SELECT DISTINCT p.k FROM unnest(v_p_key) AS p (k)) AS k
      JOIN sigledger.entity_aliases a ON a.alias_key = k.k;
    SELECT coalesce(array_agg(l.id), '{}'), coalesce(array_agg(l.head), '{}') INTO v_head_of_id, v_head
      FROM sigledger._lock_live_entities(v_res_ent) AS l;

    -- 7. links, in (entity, signal) order.
    INSERT INTO sigledger.signal_entities (signal_id, entity_id, mention)
    SELECT DISTINCT ON (h.head, p.sid) p.sid, h.head, p.nm
      FROM unnest(v_p_sig, v_p_key, v_p_name) AS p (sid, k, nm)
      JOIN unnest(v_res_key, v_res_ent) AS r (k, ent) ON r.k = p.k
      JOIN unnest(v_head_of_id, v_head) AS h (id, head) ON h.id = r.ent
     ORDER BY h.head, p.sid
    ON CONFLICT DO NOTHING;

    -- 8. unknown names under policy 'review' wait in the queue, unlinked.
    IF v_policy = 'review' THEN
        INSERT INTO sigledger.entity_review_queue (signal_id, mention)
        SELECT p.sid, p.nm FROM unnest(v_p_sig, v_p_key, v_p_name) AS p (sid, k, nm)
         WHERE NOT EXISTS (SELECT 1 FROM unnest(v_res_key) AS r (k) WHERE r.k = p.k)
         ORDER BY p.sid, p.k
        ON CONFLICT DO NOTHING;
    END IF;

    -- 9. outbox: one event per created signal, with the entities it is linked to.
    PERFORM sigledger._outbox_emit('signal', u.sid, 'signal.ingested',
               jsonb_build_object('source', s.source, 'external_id', s.external_id,
                   'entity_ids', coalesce((SELECT jsonb_agg(se.entity_id ORDER BY se.entity_id)
                                             FROM sigledger.signal_entities se WHERE se.signal_id = u.sid), '[]')))
       FROM unnest(v_sig, v_created) AS u (sid, cr)
       JOIN sigledger.signals s ON s.id = u.sid
      WHERE u.cr;

    -- 10. one result row per input item, in input order.
    RETURN QUERY
    WITH per_item AS (
        SELECT p.it, count(DISTINCT h.head)::integer AS linked, count(*) FILTER (WHERE r.k IS NULL)::integer AS queued
          FROM unnest(v_p_item, v_p_key) AS p (it, k)
          LEFT JOIN unnest(v_res_key, v_res_ent) AS r (k, ent) ON r.k = p.k
          LEFT JOIN unnest(v_head_of_id, v_head) AS h (id, head) ON h.id = r.ent
         GROUP BY p.it)
    SELECT u.it, u.sid,
           CASE WHEN u.why IS NOT NULL THEN 'rejected' WHEN u.cr THEN 'created' ELSE 'duplicate' END,
           substr(u.why, 7),
           coalesce(pi.linked, 0),
           CASE WHEN v_policy = 'review' THEN coalesce(pi.queued, 0) ELSE 0 END,
           left(u.why, 5)
      FROM unnest(v_item, v_sig, v_created, v_reason) AS u (it, sid, cr, why)
      LEFT JOIN per_item pi ON pi.it = u.it
     ORDER BY u.it;
END;
$$;

CREATE OR REPLACE FUNCTION sigledger.ingest_signals(p_batch jsonb, p_unknown_policy text DEFAULT NULL)
RETURNS TABLE (item integer, signal_id uuid, status text, reason text, linked_entities integer, queued_mentions integer,
               sqlstate text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '10s'
AS $$
    SELECT * FROM sigledger._ingest(p_batch, p_unknown_policy);
$$;
COMMENT ON FUNCTION sigledger.ingest_signals(jsonb, text) IS
'Ingest a JSON array of signals {source, external_id, occurred_at, payload?, content?, mentions?: [name, ...]} in one call (at most 10000). One row per item, in order: status created | duplicate (the (source, external_id) exists: nothing changed) | rejected (sqlstate and reason say why; the other items go on). Text follows docs/text-rules.md: source at most 200 characters and 800 bytes, external_id 500 and 1500, content 1000000 and 4000000, at most 200 mentions of 500 characters and 2000 bytes each. A rejected item''s sqlstate: 22023 a missing or bad value, or what PostgreSQL says of occurred_at (22007 not a timestamp, 22008 a field out of range, 22009 a bad offset, 22023 an unknown time zone). p_unknown_policy create | review overrides ingest_settings for this call. Call it in its own transaction.
Errors: 22023 the batch is not an array, is too large, or the policy is unknown (a bad item is a rejected row, not an error).
SQLSTATE: 22023, 55P03';

CREATE OR REPLACE FUNCTION sigledger.ingest_signal(
    p_source text, p_external_id text, p_occurred_at timestamptz,
    p_payload jsonb DEFAULT '{}', p_mentions text[] DEFAULT '{}', p_content text DEFAULT NULL,
    p_unknown_policy text DEFAULT NULL)
RETURNS TABLE (signal_id uuid, created boolean, linked_entities integer, queued_mentions integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '10s'
-- One item: the generic plans of _ingest (estimated for a few rows) fit, and skip re-planning each of its
-- statements on every call. Batches keep custom plans, which see the real array sizes.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_row record;
BEGIN
    IF p_mentions IS NOT NULL AND array_position(p_mentions, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'mentions must not contain NULL';
    END IF;
    IF cardinality(p_mentions) > 200 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('mentions must hold at most 200 names, got %s', cardinality(p_mentions));
    END IF;
    SELECT * INTO v_row FROM sigledger._ingest(
        -- NULL arguments become JSON nulls, which _ingest rejects (or, for content, ignores) like missing keys.
        jsonb_build_array(jsonb_build_object(
            'source', p_source, 'external_id', p_external_id, 'occurred_at', p_occurred_at, 'content', p_content,
            'payload', coalesce(p_payload, '{}'), 'mentions', to_jsonb(coalesce(p_mentions, '{}')))),
        p_unknown_policy);
    IF v_row.status = 'rejected' THEN
        -- the reason names the bad field and quotes its value (at most 200 characters)
        RAISE EXCEPTION USING ERRCODE = v_row.sqlstate, MESSAGE = format('signal rejected: %s', v_row.reason);
    END IF;
    RETURN QUERY SELECT v_row.signal_id, v_row.status = 'created', v_row.linked_entities, v_row.queued_mentions;
END;
$$;
COMMENT ON FUNCTION sigledger.ingest_signal(text, text, timestamptz, jsonb, text[], text, text) IS
'Ingest one signal, idempotent per (p_source, p_external_id): created = false means it existed and nothing changed. p_mentions (at most 200) are entity names resolved through aliases by resolution key (case-insensitive, docs/text-rules.md); unknown names create entities or go to entity_review_queue per p_unknown_policy (create | review; default: ingest_settings). Limits as for ingest_signals. Outbox rows in the same transaction.
SQLSTATE: 22023, 55P03';
