-- sigledger:no-transaction
-- V5_002 unique keys that close the ingest races, built CONCURRENTLY (the tables may be large and busy).
-- A failed build leaves an INVALID index; the runner detects it (pg_index.indisvalid) and rebuilds.

-- One (source, external_id) -> one signal: two sessions ingesting the same signal cannot both insert.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS signals_source_external_id_key
    ON sigledger.signals (source, external_id);

-- One alias -> one canonical entity, case-insensitively: two sessions adding the same alias to different
-- entities cannot both win. Also serves resolve_entity's lookup by lower(alias).
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS entity_aliases_alias_lower_key
    ON sigledger.entity_aliases (lower(alias));

-- Tombstone lookups ("what was merged into X"); partial, tombstones are the minority.
CREATE INDEX CONCURRENTLY IF NOT EXISTS entities_merged_into_idx
    ON sigledger.entities (merged_into) WHERE merged_into IS NOT NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS opportunities_merged_into_idx
    ON sigledger.opportunities (merged_into) WHERE merged_into IS NOT NULL;
