-- 240 read API for signals, entities and opportunities: views (SELECT for app and readonly) and functions.
-- Every view is a security_barrier (see 105).

-- Every signal linked to a (live) opportunity; links never point at a tombstone.
CREATE OR REPLACE VIEW sigledger.opportunity_signal_links WITH (security_barrier) AS
SELECT os.opportunity_id, os.signal_id, os.created_at AS linked_at,
       s.source, s.external_id, s.occurred_at, s.content, s.payload
  FROM sigledger.opportunity_signals os
  JOIN sigledger.signals s ON s.id = os.signal_id;
COMMENT ON VIEW sigledger.opportunity_signal_links IS
'Signals linked to opportunities, one row per link, with the signal''s fields.';

-- Every opportunity (live or tombstone) with its number of linked signals.
CREATE OR REPLACE VIEW sigledger.opportunity_overview WITH (security_barrier) AS
SELECT o.id, o.title, o.description, o.status, o.score, o.value_usd, o.attributes, o.merged_into, o.merged_at,
       o.created_at, o.updated_at, o.version,
       (SELECT count(*) FROM sigledger.opportunity_signals os WHERE os.opportunity_id = o.id) AS signal_count
  FROM sigledger.opportunities o;
COMMENT ON VIEW sigledger.opportunity_overview IS
'Opportunities with their number of linked signals; a tombstone has status merged, merged_into set and no links.';

-- Every entity (live or tombstone) with its aliases, sorted by resolution key.
CREATE OR REPLACE VIEW sigledger.entity_with_aliases WITH (security_barrier) AS
SELECT e.id, e.name, e.entity_type, e.attributes, e.merged_into, e.merged_at, e.created_at,
       ARRAY(SELECT a.alias FROM sigledger.entity_aliases a WHERE a.canonical_entity_id = e.id
              ORDER BY a.alias_key, a.alias) AS aliases
  FROM sigledger.entities e;
COMMENT ON VIEW sigledger.entity_with_aliases IS
'Entities with their aliases; a tombstone has merged_into set and no aliases (they moved to the winner).';

-- Alias lookup as a plain view: `WHERE alias_key = sigledger.text_key($1)` is planned like the bare indexed
-- SELECT (the view is inlined; text_key is immutable and evaluated once), for hot loops where
-- resolve_entity's per-call function overhead matters. For ASCII names the key is lower(btrim(name)).
CREATE OR REPLACE VIEW sigledger.entity_alias_lookup WITH (security_barrier) AS
SELECT a.alias_key, a.alias, a.canonical_entity_id AS entity_id
  FROM sigledger.entity_aliases a;
COMMENT ON VIEW sigledger.entity_alias_lookup IS
'One row per alias: alias_key (its resolution key, docs/text-rules.md), the alias as stored, the live entity it names. Query with WHERE alias_key = sigledger.text_key(name) (served by the unique index).';

-- Aliases that migration V8_021 moved out of entity_aliases because they conflict under the text rules.
CREATE OR REPLACE VIEW sigledger.alias_conflicts WITH (security_barrier) AS
SELECT c.id, c.alias_id, c.alias, c.canonical_entity_id AS entity_id, c.canonical_alias, c.alias_key, c.sqlstate,
       c.reason, coalesce(h.alias, c.holder_alias) AS holder_alias,
       coalesce(h.canonical_entity_id, c.holder_entity_id) AS holder_entity_id, c.alias_created_at, c.found_at
  FROM sigledger.entity_alias_conflicts c
  LEFT JOIN sigledger.entity_aliases h ON h.id = c.holder_alias_id;
COMMENT ON VIEW sigledger.alias_conflicts IS
'Aliases moved aside by migration V8_021 (text rules): the alias, its entity, why (sqlstate, reason: 23505 its resolution key is held by holder_alias of holder_entity_id, as they are now; 22023 blank or too long; SLM01 it named a merged entity). docs/text-rules.md says how to resolve them.';

-- Opportunity and entity merges in one history.
CREATE OR REPLACE VIEW sigledger.merge_history WITH (security_barrier) AS
SELECT 'opportunity'::text AS kind, m.id AS merge_id, m.target_id, m.source_ids, m.moved_links, m.duplicate_links,
       m.merged_at, m.merged_by, m.application_name, m.target_before, m.target_after
  FROM sigledger.opportunity_merges m
UNION ALL
SELECT 'entity'::text, m.id, m.target_id, m.source_ids, m.moved_links, m.duplicate_links,
       m.merged_at, m.merged_by, m.application_name, NULL::jsonb, NULL::jsonb
  FROM sigledger.entity_merges m;
COMMENT ON VIEW sigledger.merge_history IS
'Every merge: kind (opportunity | entity), when, target, sources, links moved and dropped as duplicates, the session role and application_name that ran it; for opportunities the target''s fields before and after.';

-- The signals of the opportunity an id stands for now (a merged id answers with its live target's signals).
CREATE OR REPLACE FUNCTION sigledger.opportunity_signals_of(p_opportunity_id uuid)
RETURNS TABLE (opportunity_id uuid, signal_id uuid, linked_at timestamptz, source text, external_id text,
               occurred_at timestamptz, content text, payload jsonb)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_head uuid;
BEGIN
    WITH RECURSIVE chain (cur, next, depth) AS (
        SELECT o.id, o.merged_into, 0 FROM sigledger.opportunities o WHERE o.id = p_opportunity_id
        UNION ALL
        SELECT o.id, o.merged_into, chain.depth + 1
          FROM chain JOIN sigledger.opportunities o ON o.id = chain.next WHERE chain.depth < 1000)
    SELECT chain.cur INTO v_head FROM chain WHERE chain.next IS NULL;
    IF v_head IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('opportunity not found: %s', p_opportunity_id);
    END IF;
    RETURN QUERY
    SELECT l.opportunity_id, l.signal_id, l.linked_at, l.source, l.external_id, l.occurred_at, l.content, l.payload
      FROM sigledger.opportunity_signal_links l WHERE l.opportunity_id = v_head
     ORDER BY l.occurred_at, l.signal_id;
END;
$$;
COMMENT ON FUNCTION sigledger.opportunity_signals_of(uuid) IS
'Signals linked to the opportunity p_opportunity_id stands for (following merged_into to the live target), oldest first.
SQLSTATE: P0002';

-- The signals mentioning an entity (a merged id answers for its live target).
CREATE OR REPLACE FUNCTION sigledger.entity_signals_of(p_entity_id uuid)
RETURNS TABLE (entity_id uuid, signal_id uuid, source text, external_id text, occurred_at timestamptz)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_head uuid;
BEGIN
    WITH RECURSIVE chain (cur, next, depth) AS (
        SELECT e.id, e.merged_into, 0 FROM sigledger.entities e WHERE e.id = p_entity_id
        UNION ALL
        SELECT e.id, e.merged_into, chain.depth + 1
          FROM chain JOIN sigledger.entities e ON e.id = chain.next WHERE chain.depth < 1000)
    SELECT chain.cur INTO v_head FROM chain WHERE chain.next IS NULL;
    IF v_head IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('entity not found: %s', p_entity_id);
    END IF;
    RETURN QUERY
    SELECT se.entity_id, s.id, s.source, s.external_id, s.occurred_at
      FROM sigledger.signal_entities se JOIN sigledger.signals s ON s.id = se.signal_id
     WHERE se.entity_id = v_head
     ORDER BY s.occurred_at, s.id;
END;
$$;
COMMENT ON FUNCTION sigledger.entity_signals_of(uuid) IS
'Signals that mention the entity p_entity_id stands for (following merged_into to the live target), oldest first.
SQLSTATE: P0002';
