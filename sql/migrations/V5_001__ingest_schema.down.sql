-- Rollback of V5_001: drops what it added. Tombstones and merge history are lost.
DROP TABLE IF EXISTS sigledger.entity_merges;
DROP TABLE IF EXISTS sigledger.opportunity_merges;
DROP TABLE IF EXISTS sigledger.entity_review_queue;
DROP TABLE IF EXISTS sigledger.ingest_settings;
ALTER TABLE sigledger.opportunities
    DROP CONSTRAINT IF EXISTS opportunities_merged_pair,
    DROP CONSTRAINT IF EXISTS opportunities_merged_into_not_self,
    DROP CONSTRAINT IF EXISTS opportunities_metadata_is_object,
    DROP CONSTRAINT IF EXISTS opportunities_score_range,
    DROP CONSTRAINT IF EXISTS opportunities_status_known,
    DROP CONSTRAINT IF EXISTS opportunities_title_not_blank,
    DROP COLUMN IF EXISTS merged_at,
    DROP COLUMN IF EXISTS merged_into,
    DROP COLUMN IF EXISTS metadata,
    DROP COLUMN IF EXISTS tags,
    DROP COLUMN IF EXISTS score,
    DROP COLUMN IF EXISTS status,
    DROP COLUMN IF EXISTS description;
ALTER TABLE sigledger.entity_aliases DROP CONSTRAINT IF EXISTS entity_aliases_alias_trimmed;
ALTER TABLE sigledger.entities
    DROP CONSTRAINT IF EXISTS entities_merged_pair,
    DROP CONSTRAINT IF EXISTS entities_merged_into_not_self,
    DROP CONSTRAINT IF EXISTS entities_name_not_blank,
    DROP COLUMN IF EXISTS merged_at,
    DROP COLUMN IF EXISTS merged_into;
ALTER TABLE sigledger.signals
    DROP CONSTRAINT IF EXISTS signals_payload_is_object,
    DROP CONSTRAINT IF EXISTS signals_external_id_not_blank,
    DROP CONSTRAINT IF EXISTS signals_source_not_blank;
