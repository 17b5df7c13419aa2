-- sigledger:before V5_003
-- Tombstones the old code wrote: merged_into set, nothing else. V5_001 adds merged_at and the CHECK
-- entities_tombstone_consistent (merged_into and merged_at set together), validated by V5_003. The rule:
-- 1. merged_at = updated_at, the row's last change (the merge, when the old code touched nothing after it),
--    for every tombstone without one;
-- 2. a signal link to a tombstone moves to the live entity at the end of its merged_into chain, as
--    merge_entities does since V5 (a link the live entity already has for that signal is moved, whole, to
--    sigledger_meta.quarantine instead: signal_entities' primary key is (signal_id, entity_id)); links to a
--    cycle of tombstones stay.
-- Also what `down` to below V5_001 and `up` again needs: the rollback drops merged_at and keeps merged_into.
DO $repair$
DECLARE
    v_stamped bigint;
    v_moved bigint;
    v_quarantined bigint;
BEGIN
    UPDATE sigledger.entities e SET merged_at = e.updated_at
     WHERE e.merged_into IS NOT NULL AND e.merged_at IS NULL;
    GET DIAGNOSTICS v_stamped = ROW_COUNT;

    WITH RECURSIVE chain (tomb, cur, depth) AS (
        SELECT e.id, e.merged_into, 1 FROM sigledger.entities e WHERE e.merged_into IS NOT NULL
        UNION ALL
        SELECT c.tomb, e.merged_into, c.depth + 1 FROM chain c JOIN sigledger.entities e ON e.id = c.cur
         WHERE e.merged_into IS NOT NULL AND c.depth < 100
    ), live AS (
        SELECT DISTINCT ON (c.tomb) c.tomb, c.cur AS live_id
          FROM chain c JOIN sigledger.entities e ON e.id = c.cur AND e.merged_into IS NULL
         ORDER BY c.tomb, c.depth
    ), affected AS (
        SELECT DISTINCT s.signal_id FROM sigledger.signal_entities s JOIN live l ON l.tomb = s.entity_id
    ), ranked AS (
        -- links of one signal that end on the same live entity: the one already on it, else the oldest, stays
        SELECT s.signal_id, s.entity_id, coalesce(l.live_id, s.entity_id) AS target,
               row_number() OVER (PARTITION BY s.signal_id, coalesce(l.live_id, s.entity_id)
                                  ORDER BY (l.live_id IS NULL) DESC, s.created_at, s.entity_id) AS n
          FROM sigledger.signal_entities s
          JOIN affected a ON a.signal_id = s.signal_id
          LEFT JOIN live l ON l.tomb = s.entity_id
    ), moved AS (
        DELETE FROM sigledger.signal_entities s USING ranked r
         WHERE s.signal_id = r.signal_id AND s.entity_id = r.entity_id AND r.n > 1
        RETURNING s.signal_id, s.entity_id, s.mention, s.created_at, r.target
    )
    INSERT INTO sigledger_meta.quarantine (source_table, rule, reason, row_data)
    SELECT 'sigledger.signal_entities', 'R003__entity_tombstones',
           format('link of signal %s to tombstone %s; the live entity %s has that signal already',
                  m.signal_id, m.entity_id, m.target),
           jsonb_build_object('signal_id', m.signal_id, 'entity_id', m.entity_id, 'mention', m.mention,
                              'created_at', m.created_at)
      FROM moved m;
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
    UPDATE sigledger.signal_entities s SET entity_id = l.live_id FROM live l WHERE s.entity_id = l.tomb;
    GET DIAGNOSTICS v_moved = ROW_COUNT;

    IF v_stamped > 0 THEN
        INSERT INTO sigledger_meta.repair_history (repair, before_version, rule, action, rows, detail)
        VALUES ('R003__entity_tombstones.sql', coalesce(current_setting('sigledger.repair_before', true), '?'),
                'tombstones without merged_at', 'repaired', v_stamped, 'merged_at = updated_at');
    END IF;
    IF v_moved > 0 THEN
        INSERT INTO sigledger_meta.repair_history (repair, before_version, rule, action, rows, detail)
        VALUES ('R003__entity_tombstones.sql', coalesce(current_setting('sigledger.repair_before', true), '?'),
                'signal links moved from a tombstone to its live entity', 'repaired', v_moved, NULL);
    END IF;
    IF v_quarantined > 0 THEN
        INSERT INTO sigledger_meta.repair_history (repair, before_version, rule, action, rows, detail)
        VALUES ('R003__entity_tombstones.sql', coalesce(current_setting('sigledger.repair_before', true), '?'),
                'signal links the live entity already had', 'quarantined', v_quarantined, NULL);
    END IF;
END
$repair$;
