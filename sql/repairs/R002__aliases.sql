-- sigledger:before V5_002 V5_003
-- Aliases the V3_010 schema accepted and V5 refuses: with surrounding spaces (V5_001's
-- entity_aliases_alias_trimmed, validated by V5_003) and equal under lower() (V5_002's unique index
-- entity_aliases_alias_lower_key: a build over duplicates is left INVALID); and aliases still on a tombstone
-- (the old code merged without moving them; merge_entities moves them since V5). The rule, deterministic, in
-- this order:
-- 1. an alias belongs to the live entity at the end of its entity's merged_into chain (its own entity when that
--    is live; a cycle of tombstones has none, and its aliases stay where they are);
-- 2. aliases equal once trimmed and lower-cased keep one row: the oldest (created_at, then id), one whose
--    entity has a live end first. Every other one is moved, whole, to sigledger_meta.quarantine with the alias
--    it repeats. One name on two live entities is the case to decide: the later alias is quarantined and the
--    entity stays (merge the two with merge_entities before upgrading to keep both names on one entity);
-- 3. the rest are re-pointed to their live entity and trimmed (btrim: spaces, as the CHECK says).
-- Runs before V5_002 and again before V5_003 (finding nothing the second time unless rows came in between).
-- Only the rows it changes are locked; the scans take no lock that blocks the application.
DO $repair$
DECLARE
    v_quarantined bigint;
    v_repaired bigint;
BEGIN
    WITH RECURSIVE chain (tomb, cur, depth) AS (
        SELECT e.id, e.merged_into, 1 FROM sigledger.entities e WHERE e.merged_into IS NOT NULL
        UNION ALL
        SELECT c.tomb, e.merged_into, c.depth + 1 FROM chain c JOIN sigledger.entities e ON e.id = c.cur
         WHERE e.merged_into IS NOT NULL AND c.depth < 100
    ), live AS (
        SELECT DISTINCT ON (c.tomb) c.tomb, c.cur AS live_id
          FROM chain c JOIN sigledger.entities e ON e.id = c.cur AND e.merged_into IS NULL
         ORDER BY c.tomb, c.depth
    ), dup AS (
        SELECT lower(btrim(a.alias)) AS k FROM sigledger.entity_aliases a GROUP BY 1 HAVING count(*) > 1
    ), ranked AS (
        SELECT a.id, first_value(a.id) OVER w AS keeper, row_number() OVER w AS n
          FROM sigledger.entity_aliases a
          JOIN dup d ON d.k = lower(btrim(a.alias))
          JOIN sigledger.entities e ON e.id = a.canonical_entity_id
          LEFT JOIN live l ON l.tomb = a.canonical_entity_id
        WINDOW w AS (PARTITION BY lower(btrim(a.alias))
                     ORDER BY (e.merged_into IS NULL OR l.live_id IS NOT NULL) DESC, a.created_at, a.id)
    ), moved AS (
        DELETE FROM sigledger.entity_aliases a USING ranked r
         WHERE a.id = r.id AND r.n > 1
        RETURNING a.id, a.canonical_entity_id, a.alias, a.created_at, r.keeper
    )
    INSERT INTO sigledger_meta.quarantine (source_table, rule, reason, row_data)
    SELECT 'sigledger.entity_aliases', 'R002__aliases',
           format('equal once trimmed and lower-cased to alias %L (id %s) of entity %s, which is kept',
                  k.alias, k.id, k.canonical_entity_id),
           jsonb_build_object('id', m.id, 'canonical_entity_id', m.canonical_entity_id, 'alias', m.alias,
                              'created_at', m.created_at)
      FROM moved m JOIN sigledger.entity_aliases k ON k.id = m.keeper;
    GET DIAGNOSTICS v_quarantined = ROW_COUNT;

    WITH RECURSIVE chain (tomb, cur, depth) AS (
        SELECT e.id, e.merged_into, 1 FROM sigledger.entities e WHERE e.merged_into IS NOT NULL
        UNION ALL
        SELECT c.tomb, e.merged_into, c.depth + 1 FROM chain c JOIN sigledger.entities e ON e.id = c.cur
         WHERE e.merged_into IS NOT NULL AND c.depth < 100
    ), live AS (
        SELECT DISTINCT ON (c.tomb) c.tomb, c.cur AS live_id
          FROM chain c JOIN sigledger.entities e ON e.id = c.cur AND e.merged_into IS NULL
         ORDER BY c.tomb, c.depth
    )
    UPDATE sigledger.entity_aliases a
       SET canonical_entity_id = coalesce(l.live_id, a.canonical_entity_id), alias = btrim(a.alias)
      FROM sigledger.entity_aliases x LEFT JOIN live l ON l.tomb = x.canonical_entity_id
     WHERE x.id = a.id AND (a.alias <> btrim(a.alias) OR l.live_id IS NOT NULL);
    GET DIAGNOSTICS v_repaired = ROW_COUNT;

    IF v_quarantined > 0 THEN
        INSERT INTO sigledger_meta.repair_history (repair, before_version, rule, action, rows, detail)
        VALUES ('R002__aliases.sql', coalesce(current_setting('sigledger.repair_before', true), '?'),
                'aliases equal once trimmed and lower-cased', 'quarantined', v_quarantined,
                'the oldest alias of each name is kept; see sigledger_meta.quarantine');
    END IF;
    IF v_repaired > 0 THEN
        INSERT INTO sigledger_meta.repair_history (repair, before_version, rule, action, rows, detail)
        VALUES ('R002__aliases.sql', coalesce(current_setting('sigledger.repair_before', true), '?'),
                'aliases trimmed or moved from a tombstone to its live entity', 'repaired', v_repaired, NULL);
    END IF;
END
$repair$;
