-- sigledger:no-transaction
-- sigledger:supersedes d08d95bb6cd5bd8245b1cddab9c9dd54d4252f5671cd41a06cad1cbcdfa868fc
-- V5_001 signals, entities, opportunities (issue 4): what the baseline lacks for ingestion and merges.
-- New CHECKs on existing tables are added NOT VALID (no full scan under an exclusive lock) and validated
-- by V5_003; new indexes on existing tables are built CONCURRENTLY by V5_002.

-- Each step below is one transaction that locks at most one table the application uses (rewritten since its
-- first release, one transaction that held entities while it waited for signals: deadlocks with ingestion,
-- which writes signals, then entities). The resulting schema is the first release's
-- (tests/migrate/test_superseded.py), so a database that ran the first content is not drifted.

BEGIN;
-- entities: the baseline has merged_into; a tombstone also records when.
ALTER TABLE sigledger.entities ADD COLUMN merged_at timestamptz;
ALTER TABLE sigledger.entities
    ADD CONSTRAINT entities_tombstone_consistent CHECK ((merged_into IS NULL) = (merged_at IS NULL)) NOT VALID;
COMMIT;

BEGIN;
-- Aliases are stored trimmed, so that lower(alias) is the whole comparison key.
ALTER TABLE sigledger.entity_aliases
    ADD CONSTRAINT entity_aliases_alias_trimmed CHECK (alias = btrim(alias)) NOT VALID;
COMMIT;

BEGIN;
-- configuration: what ingestion does with a mention that matches no alias.
CREATE TABLE sigledger.ingest_settings (
    singleton              boolean PRIMARY KEY DEFAULT true,
    unknown_entity_policy  text NOT NULL DEFAULT 'create',
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ingest_settings_singleton_true CHECK (singleton),
    CONSTRAINT ingest_settings_unknown_entity_policy_valid CHECK (unknown_entity_policy IN ('create', 'review'))
);
COMMENT ON TABLE sigledger.ingest_settings IS
    'One row: unknown_entity_policy create (unknown mentions become entities) or review (they are queued).';
INSERT INTO sigledger.ingest_settings DEFAULT VALUES;
COMMIT;

-- locks signals (the foreign key)
BEGIN;
-- review queue for unknown mentions under policy 'review'.
CREATE TABLE sigledger.entity_review_queue (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    signal_id   uuid NOT NULL,
    mention     text NOT NULL,
    status      text NOT NULL DEFAULT 'pending',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT entity_review_queue_signal_id_fkey FOREIGN KEY (signal_id)
        REFERENCES sigledger.signals (id) ON DELETE CASCADE,
    CONSTRAINT entity_review_queue_mention_trimmed CHECK (mention = btrim(mention) AND length(mention) BETWEEN 1 AND 500),
    CONSTRAINT entity_review_queue_status_valid CHECK (status IN ('pending', 'resolved', 'dismissed'))
);
COMMENT ON TABLE sigledger.entity_review_queue IS 'Mentions that matched no alias while the policy was review.';
-- One row per (signal, mention): a replayed batch cannot queue the same mention twice. New empty table.
-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX entity_review_queue_signal_mention_key ON sigledger.entity_review_queue (signal_id, lower(mention));
COMMIT;

-- locks opportunities (the foreign key)
BEGIN;
-- merge history.
CREATE TABLE sigledger.opportunity_merges (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_id         uuid NOT NULL,
    source_ids        uuid[] NOT NULL,
    moved_links       bigint NOT NULL,
    duplicate_links   bigint NOT NULL,
    target_before     jsonb NOT NULL,
    target_after      jsonb NOT NULL,
    merged_at         timestamptz NOT NULL DEFAULT now(),
    merged_by         text NOT NULL DEFAULT session_user,
    application_name  text NOT NULL DEFAULT current_setting('application_name'),
    CONSTRAINT opportunity_merges_target_id_fkey FOREIGN KEY (target_id) REFERENCES sigledger.opportunities (id),
    CONSTRAINT opportunity_merges_source_ids_not_empty CHECK (cardinality(source_ids) > 0),
    CONSTRAINT opportunity_merges_counts_nonnegative CHECK (moved_links >= 0 AND duplicate_links >= 0)
);
COMMENT ON TABLE sigledger.opportunity_merges IS 'One row per merge_opportunities call that committed.';
-- New empty table: plain index builds block nothing.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX opportunity_merges_target_id_idx ON sigledger.opportunity_merges (target_id);
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX opportunity_merges_source_ids_idx ON sigledger.opportunity_merges USING gin (source_ids);
COMMIT;

-- locks entities (the foreign key)
BEGIN;
CREATE TABLE sigledger.entity_merges (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_id         uuid NOT NULL,
    source_ids        uuid[] NOT NULL,
    moved_aliases     bigint NOT NULL,
    moved_links       bigint NOT NULL,
    duplicate_links   bigint NOT NULL,
    merged_at         timestamptz NOT NULL DEFAULT now(),
    merged_by         text NOT NULL DEFAULT session_user,
    application_name  text NOT NULL DEFAULT current_setting('application_name'),
    CONSTRAINT entity_merges_target_id_fkey FOREIGN KEY (target_id) REFERENCES sigledger.entities (id),
    CONSTRAINT entity_merges_source_ids_not_empty CHECK (cardinality(source_ids) > 0),
    CONSTRAINT entity_merges_counts_nonnegative CHECK (moved_aliases >= 0 AND moved_links >= 0 AND duplicate_links >= 0)
);
COMMENT ON TABLE sigledger.entity_merges IS 'One row per merge_entities call that committed.';
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX entity_merges_target_id_idx ON sigledger.entity_merges (target_id);
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX entity_merges_source_ids_idx ON sigledger.entity_merges USING gin (source_ids);
COMMIT;
