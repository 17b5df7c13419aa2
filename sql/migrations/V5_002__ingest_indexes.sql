-- sigledger:no-transaction
-- V5_002 the unique alias key that closes the alias race, and tombstone lookups, built CONCURRENTLY (the
-- tables may be large and busy). A failed build leaves an INVALID index: the runner detects and rebuilds it.

-- One alias -> one canonical entity, case-insensitively: two sessions adding the same alias to different
-- entities cannot both win. Also serves resolve_entity (V3_008's idx_entity_aliases_alias_name stays for
-- parity with the seed; dropping it is a later, separate decision).
CREATE UNIQUE INDEX CONCURRENTLY entity_aliases_alias_lower_key ON sigledger.entity_aliases (lower(alias));

-- "What was merged into X": partial, tombstones are the minority.
CREATE INDEX CONCURRENTLY entities_merged_into_idx ON sigledger.entities (merged_into) WHERE merged_into IS NOT NULL;
CREATE INDEX CONCURRENTLY opportunities_merged_into_idx ON sigledger.opportunities (merged_into)
    WHERE merged_into IS NOT NULL;
