-- Rollback of V5_001: drops what it added. Merge history and the review queue are lost.
DROP TABLE IF EXISTS sigledger.entity_merges;
DROP TABLE IF EXISTS sigledger.opportunity_merges;
DROP TABLE IF EXISTS sigledger.entity_review_queue;
DROP TABLE IF EXISTS sigledger.ingest_settings;
ALTER TABLE sigledger.entity_aliases DROP CONSTRAINT IF EXISTS entity_aliases_alias_trimmed;
ALTER TABLE sigledger.entities DROP CONSTRAINT IF EXISTS entities_tombstone_consistent;
ALTER TABLE sigledger.entities DROP COLUMN IF EXISTS merged_at;
