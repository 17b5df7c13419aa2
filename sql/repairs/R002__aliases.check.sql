-- Findings of R002 (read-only; runs on any schema from V3_000 to V5_003).
WITH RECURSIVE chain (tomb, cur, depth) AS (
    SELECT e.id, e.merged_into, 1 FROM sigledger.entities e WHERE e.merged_into IS NOT NULL
    UNION ALL
    SELECT c.tomb, e.merged_into, c.depth + 1 FROM chain c JOIN sigledger.entities e ON e.id = c.cur
     WHERE e.merged_into IS NOT NULL AND c.depth < 100
), live AS (
    SELECT DISTINCT ON (c.tomb) c.tomb, c.cur AS live_id
      FROM chain c JOIN sigledger.entities e ON e.id = c.cur AND e.merged_into IS NULL
     ORDER BY c.tomb, c.depth
), aliases AS (
    SELECT a.alias, a.canonical_entity_id, l.live_id, lower(btrim(a.alias)) AS k,
           coalesce(l.live_id, a.canonical_entity_id) AS owner
      FROM sigledger.entity_aliases a LEFT JOIN live l ON l.tomb = a.canonical_entity_id
), groups AS (
    SELECT k, count(*) AS copies, count(DISTINCT owner) AS owners FROM aliases GROUP BY k HAVING count(*) > 1
)
SELECT 'aliases of tombstones (entities merged by the old code, which left their aliases)' AS finding,
       'repair: moved to the live entity the tombstone was merged into' AS action, count(*) AS rows,
       (array_agg(format('%L of %s -> %s', alias, canonical_entity_id, live_id) ORDER BY k))[1:3] AS examples
  FROM aliases WHERE live_id IS NOT NULL
UNION ALL
SELECT 'aliases with leading or trailing spaces (V5_001 entity_aliases_alias_trimmed)',
       'repair: trimmed', count(*), (array_agg(format('%L', alias) ORDER BY k))[1:3]
  FROM aliases WHERE alias <> btrim(alias)
UNION ALL
SELECT 'aliases repeated on one entity once trimmed and lower-cased (V5_002 entity_aliases_alias_lower_key)',
       'quarantine: all but the oldest', coalesce(sum(copies - 1), 0), (array_agg(format('%L', k) ORDER BY k))[1:3]
  FROM groups WHERE owners = 1
UNION ALL
SELECT 'one name on different entities once trimmed and lower-cased (V5_002 entity_aliases_alias_lower_key)',
       'quarantine: the later aliases; to keep every name, merge those entities with merge_entities first',
       coalesce(sum(copies - 1), 0), (array_agg(format('%L on %s entities', k, owners) ORDER BY k))[1:3]
  FROM groups WHERE owners > 1;
