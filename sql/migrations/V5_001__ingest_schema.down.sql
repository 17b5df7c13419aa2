-- Rollback of V5_001: drops what it added. Merge history and the review queue are lost.
-- The views of sql/functions/240 read these tables and columns: drop them first (the runner re-applies every
-- repeatable file after a rollback).
DROP VIEW IF EXISTS sigledger.merge_history;
DROP VIEW IF EXISTS sigledger.entity_with_aliases;
DROP TABLE IF EXISTS sigledger.entity_merges;
DROP TABLE IF EXISTS sigledger.opportunity_merges;
DROP TABLE IF EXISTS sigledger.entity_review_queue;
DROP TABLE IF EXISTS sigledger.ingest_settings;
ALTER TABLE sigledger.entity_aliases DROP CONSTRAINT IF EXISTS entity_aliases_alias_trimmed;
ALTER TABLE sigledger.entities DROP CONSTRAINT IF EXISTS entities_tombstone_consistent;
ALTER TABLE sigledger.entities DROP COLUMN IF EXISTS merged_at;
