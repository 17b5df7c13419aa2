-- Findings of R003 (read-only; runs on any schema from V3_000 to V5_003: merged_at is read from the row as
-- jsonb because the column only exists from V5_001 on).
SELECT 'tombstoned entities without merged_at (V5_001 entities_tombstone_consistent)' AS finding,
       'repair: merged_at = updated_at' AS action, count(*) AS rows,
       (array_agg(format('entity %s (%L) merged into %s, updated %s', e.id, left(e.name, 60), e.merged_into,
                         e.updated_at) ORDER BY e.id))[1:3] AS examples
  FROM sigledger.entities e
 WHERE e.merged_into IS NOT NULL AND to_jsonb(e) ->> 'merged_at' IS NULL
UNION ALL
SELECT 'signal links to tombstoned entities (the old code merged without moving them)',
       'repair: moved to the live entity; a link the live entity already has is quarantined',
       count(*), (array_agg(format('signal %s -> entity %s', s.signal_id, s.entity_id) ORDER BY s.signal_id))[1:3]
  FROM sigledger.signal_entities s JOIN sigledger.entities e ON e.id = s.entity_id
 WHERE e.merged_into IS NOT NULL;
