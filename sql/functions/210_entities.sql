-- 210 entities: create_entity, resolve_entity, add_alias, merge_entities.
-- Invariant (enforced by entity_aliases_alias_key_key): one alias, compared by its resolution key (alias_key =
-- _text_key(alias), docs/text-rules.md), maps to exactly one canonical entity. Aliases and links always point
-- at live entities (merges move them; backstop triggers in 200 refuse anything else). Names and aliases pass
-- through _text_arg (005): trimmed of Unicode whitespace and format characters, NFC, at most 500 characters
-- and 2000 bytes; an entity holds at most 1000 aliases.

-- _entity_alias_room: raises 54000 when entity p_entity_id holds more than the 1000 aliases allowed. Called
-- after an insert or a move, so that an idempotent replay is never refused. A soft bound under concurrency:
-- two callers adding to one entity at once hold only FOR KEY SHARE and may pass it by one each (the bound
-- exists against runaway callers, not as an invariant).
CREATE OR REPLACE FUNCTION sigledger._entity_alias_room(p_entity_id uuid)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_count bigint;
BEGIN
    SELECT count(*) INTO v_count FROM sigledger.entity_aliases a WHERE a.canonical_entity_id = p_entity_id;
    IF v_count > 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '54000',
            MESSAGE = format('entity %s would hold %s aliases, the limit is 1000', p_entity_id, v_count),
            HINT = 'Aliases are names people use for the entity; a list this long is probably a bug in the caller.';
    END IF;
END;
$$;

-- create_entity: a new entity whose name is also its first alias, plus optional extra aliases (at most 100).
CREATE OR REPLACE FUNCTION sigledger.create_entity(p_name text, p_aliases text[] DEFAULT '{}', p_entity_type text DEFAULT 'unknown')
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_id uuid;
    v_name text;
    v_type text;
    v_taken text;
    v_owner uuid;
    v_aliases text[];
BEGIN
    v_name := _text_arg(p_name, 'entity name', 500, 2000, 'name', '22023');
    v_type := _text_arg(p_entity_type, 'entity type', 100, 400, 'name', '22023');
    IF cardinality(p_aliases) > 100 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('aliases must hold at most 100 names, got %s', cardinality(p_aliases));
    END IF;
    -- the name first, then the aliases, each in canonical form; one spelling per resolution key (the first
    -- given), sorted by key so that concurrent callers insert (and wait on) the unique index keys in the same
    -- order.
    SELECT array_agg(t.alias ORDER BY t.k) INTO v_aliases
      FROM (SELECT DISTINCT ON (c.k) c.alias, c.k
              FROM (SELECT x.ord, y.alias, _name_key(y.alias, 'alias') AS k
                      FROM unnest(ARRAY[v_name] || coalesce(p_aliases, '{}')) WITH ORDINALITY AS x (a, ord)
                      CROSS JOIN LATERAL (SELECT CASE WHEN x.ord = 1 THEN x.a
                                                      ELSE _text_arg(x.a, 'alias', 500, 2000, 'name', '22023')
                                                 END AS alias) AS y) AS c
             ORDER BY c.k, c.ord) AS t;

    INSERT INTO sigledger.entities (name, entity_type) VALUES (v_name, v_type) RETURNING id INTO v_id;
    WITH ins AS (
        INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id)
        SELECT a, v_id FROM unnest(v_aliases) AS a
        ON CONFLICT (alias_key) DO NOTHING
        RETURNING alias)
    SELECT a INTO v_taken FROM unnest(v_aliases) AS a WHERE a NOT IN (SELECT ins.alias FROM ins) LIMIT 1;
    IF v_taken IS NOT NULL THEN
        SELECT canonical_entity_id INTO v_owner FROM sigledger.entity_aliases WHERE alias_key = _text_key(v_taken);
        RAISE EXCEPTION USING ERRCODE = '23505', CONSTRAINT = 'entity_aliases_alias_key_key',
            MESSAGE = format('alias %s already belongs to entity %s', _text_quote(v_taken), v_owner),
            HINT = 'Resolve the name with resolve_entity, or merge the entities.';
    END IF;
    PERFORM sigledger._outbox_emit('entity', v_id, 'entity.created',
                                   jsonb_build_object('name', v_name, 'entity_type', v_type, 'aliases', to_jsonb(v_aliases)));
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION sigledger.create_entity(text, text[], text) IS
'Create an entity named p_name (of p_entity_type); the name and each of p_aliases (at most 100) become aliases, matched by their resolution key (case-insensitive, docs/text-rules.md), one entity per key. Names are trimmed of whitespace and format characters and stored NFC: at most 500 characters and 2000 bytes (type: 100 and 400). Returns the entity id.
SQLSTATE: 22023, 23505';

-- resolve_entity: the live entity an alias stands for, or NULL. One lookup on entity_aliases_alias_key_key;
-- no join: aliases only ever point at live entities (merge_entities moves them). The input is validated only
-- when nothing was found (a blank or NULL name finds nothing), which keeps the hit path to the key and the
-- lookup: measured, the check up front cost about 1 us of a 10 us call.
CREATE OR REPLACE FUNCTION sigledger.resolve_entity(p_name text)
RETURNS uuid
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    IF octet_length(p_name) <= 2000 THEN
        SELECT a.canonical_entity_id INTO v_id FROM sigledger.entity_aliases a WHERE a.alias_key = _text_key(p_name);
    END IF;
    IF v_id IS NULL THEN
        PERFORM _text_arg(p_name, 'name to resolve', 500, 2000, 'name', '22023');
    END IF;
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION sigledger.resolve_entity(text) IS
'Return the id of the live entity that has an alias with the same resolution key as p_name (case-insensitive, surrounding whitespace and format characters ignored, compatibility forms folded: docs/text-rules.md), or NULL when none does.
SQLSTATE: 22023';

-- add_alias: attach an alias to a live entity. Idempotent for the same entity; the unique index on alias_key
-- decides a race between two entities (the loser waits for the winner''s commit, then gets 23505 naming the
-- owner).
CREATE OR REPLACE FUNCTION sigledger.add_alias(p_entity_id uuid, p_alias text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '10s'
AS $$
DECLARE
    v_into uuid;
    v_owner uuid;
    v_alias text;
    v_key text;
BEGIN
    IF p_entity_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'entity id is NULL';
    END IF;
    v_alias := _text_arg(p_alias, 'alias', 500, 2000, 'name', '22023');
    v_key := _name_key(v_alias, 'alias');
    -- KEY SHARE: a concurrent merge_entities (FOR UPDATE) of this entity waits for us, or we for it.
    SELECT merged_into INTO v_into FROM sigledger.entities WHERE id = p_entity_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('entity not found: %s', p_entity_id);
    END IF;
    IF v_into IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SLM01',
            MESSAGE = format('entity %s was merged into %s: add the alias to %s', p_entity_id, v_into, v_into);
    END IF;
    INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id) VALUES (v_alias, p_entity_id)
    ON CONFLICT (alias_key) DO NOTHING;
    IF FOUND THEN
        PERFORM sigledger._entity_alias_room(p_entity_id);
        PERFORM sigledger._outbox_emit('entity', p_entity_id, 'entity.aliased', jsonb_build_object('alias', v_alias));
        RETURN true;
    END IF;
    SELECT canonical_entity_id INTO v_owner FROM sigledger.entity_aliases WHERE alias_key = v_key;
    IF v_owner = p_entity_id THEN
        RETURN false;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '23505', CONSTRAINT = 'entity_aliases_alias_key_key',
        MESSAGE = format('alias %s already belongs to entity %s', _text_quote(v_alias), v_owner),
        HINT = 'Merge the entities if they are the same.';
END;
$$;
COMMENT ON FUNCTION sigledger.add_alias(uuid, text) IS
'Attach alias p_alias to live entity p_entity_id. Returns true when added, false when it (or a spelling with the same resolution key) was already that entity''s alias. The alias is trimmed and stored NFC: at most 500 characters and 2000 bytes.
Errors: SLM01 the entity is a tombstone; 23505 the alias belongs to another entity; 54000 the entity already holds 1000 aliases.
SQLSTATE: 22023, P0002, SLM01, 23505, 54000, 55P03';

-- merge_entities: move every alias and signal link of p_sources to p_target, leave the sources as tombstones.
CREATE OR REPLACE FUNCTION sigledger.merge_entities(p_target uuid, p_sources uuid[])
RETURNS TABLE (target_id uuid, moved_aliases integer, moved_links integer, duplicate_links integer, merge_id bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '10s'
AS $$
DECLARE
    v_ids uuid[] := p_sources || p_target;
    v_locked integer;
    v_missing text;
    v_dead record;
    v_aliases integer;
    v_source_links integer;
    v_moved integer;
    v_merge_id bigint;
    v_relinked uuid[];
BEGIN
    PERFORM sigledger._check_merge_input('entity', p_target, p_sources);
    -- Lock target and sources in id order: two merges over overlapping ids queue up instead of deadlocking.
    SELECT count(*) INTO v_locked
      FROM (SELECT e.id FROM sigledger.entities e WHERE e.id = ANY (v_ids) ORDER BY e.id FOR UPDATE) AS l;
    IF v_locked <> cardinality(v_ids) THEN
        SELECT _text_list(array_agg(i::text ORDER BY i)) INTO v_missing FROM unnest(v_ids) AS i
         WHERE NOT EXISTS (SELECT 1 FROM sigledger.entities e WHERE e.id = i);
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('entity not found: %s', v_missing);
    END IF;
    -- Read after the lock: a merge that committed while we waited is visible now.
    -- (IS TRUE: the rows by their primary key, never by a scan of the tombstones; see _signal_entities_no_tombstone)
    SELECT e.id, e.merged_into INTO v_dead FROM sigledger.entities e
     WHERE e.id = ANY (v_ids) AND (e.merged_into IS NOT NULL) IS TRUE ORDER BY e.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SLM01',
            MESSAGE = format('entity %s is a tombstone: it was merged into %s', v_dead.id, v_dead.merged_into),
            HINT = format('Merge into or from %s instead.', v_dead.merged_into);
    END IF;

    -- The signals linked to a source: their links change below, so each gets an outbox event of its own (a
    -- sync worker holding an older snapshot of one of them must not have the last word; docs/graph.md).
    v_relinked := ARRAY(SELECT DISTINCT se.signal_id FROM sigledger.signal_entities se
                         WHERE se.entity_id = ANY (p_sources) ORDER BY se.signal_id);
    UPDATE sigledger.entity_aliases SET canonical_entity_id = p_target WHERE canonical_entity_id = ANY (p_sources);
    GET DIAGNOSTICS v_aliases = ROW_COUNT;
    PERFORM sigledger._entity_alias_room(p_target);
    -- links: copy to the target (a signal already linked to it is not duplicated), then drop from the sources.
    INSERT INTO sigledger.signal_entities (signal_id, entity_id, mention)
    SELECT DISTINCT ON (se.signal_id) se.signal_id, p_target, se.mention
      FROM sigledger.signal_entities se WHERE se.entity_id = ANY (p_sources)
     ORDER BY se.signal_id, se.entity_id
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    DELETE FROM sigledger.signal_entities WHERE entity_id = ANY (p_sources);
    GET DIAGNOSTICS v_source_links = ROW_COUNT;
    -- The target keeps its name and type; attribute keys it lacks come from the sources (later id wins).
    UPDATE sigledger.entities t
       SET attributes = (SELECT coalesce(jsonb_object_agg(kv.key, kv.value), '{}')
                           FROM (SELECT DISTINCT ON (a.key) a.key, a.value
                                   FROM sigledger.entities s, jsonb_each(s.attributes) AS a
                                  WHERE s.id = ANY (v_ids)
                                  ORDER BY a.key, (s.id = p_target) DESC, s.id DESC) AS kv),
           updated_at = now(), version = t.version + 1
     WHERE t.id = p_target;
    UPDATE sigledger.entities s
       SET merged_into = p_target, merged_at = now(), updated_at = now(), version = s.version + 1
     WHERE s.id = ANY (p_sources);

    INSERT INTO sigledger.entity_merges (target_id, source_ids, moved_aliases, moved_links, duplicate_links)
    VALUES (p_target, p_sources, v_aliases, v_moved, v_source_links - v_moved)
    RETURNING id INTO v_merge_id;
    PERFORM sigledger._outbox_emit('entity', s, 'entity.merged', jsonb_build_object('merged_into', p_target, 'merge_id', v_merge_id))
       FROM unnest(p_sources) AS s;
    PERFORM sigledger._outbox_emit('entity', p_target, 'entity.merge_target',
                                   jsonb_build_object('sources', to_jsonb(p_sources), 'merge_id', v_merge_id));
    PERFORM sigledger._outbox_emit_many('signal', v_relinked, 'signal.relinked',
                                        jsonb_build_object('merged_into', p_target, 'merge_id', v_merge_id));
    RETURN QUERY SELECT p_target, v_aliases, v_moved, v_source_links - v_moved, v_merge_id;
END;
$$;
COMMENT ON FUNCTION sigledger.merge_entities(uuid, uuid[]) IS
'Merge entities p_sources into p_target in one transaction: aliases and signal links move to the target (no duplicate links), each source keeps a tombstone (merged_into), a row lands in entity_merges. Locks are taken in id order.
Errors: SLM02 empty list, NULL or duplicate id, target among sources; 22023 more than 1000 sources; P0002 unknown id; SLM01 an id is already merged (the message names the tombstone); 54000 the merged entity would hold more than 1000 aliases.
SQLSTATE: SLM02, 22023, P0002, SLM01, 54000, 55P03';
