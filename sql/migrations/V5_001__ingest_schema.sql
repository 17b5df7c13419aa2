-- V5_001 signals, entities, opportunities: columns, constraints and tables that issue 4 adds to the baseline.
-- Written with IF NOT EXISTS so it applies whether or not the baseline already carries a column.
-- Indexes on possibly large baseline tables are built CONCURRENTLY in V5_002, not here.

-- signals -------------------------------------------------------------------------------------------------
ALTER TABLE sigledger.signals
    ADD CONSTRAINT signals_source_not_blank CHECK (length(btrim(source)) BETWEEN 1 AND 200),
    ADD CONSTRAINT signals_external_id_not_blank CHECK (length(btrim(external_id)) BETWEEN 1 AND 500),
    ADD CONSTRAINT signals_payload_is_object CHECK (jsonb_typeof(payload) = 'object');

-- entities: a merged entity keeps its row as a tombstone pointing at the winner ----------------------------
ALTER TABLE sigledger.entities
    ADD COLUMN IF NOT EXISTS merged_into uuid REFERENCES sigledger.entities (id),
    ADD COLUMN IF NOT EXISTS merged_at timestamptz,
    ADD CONSTRAINT entities_name_not_blank CHECK (length(btrim(name)) BETWEEN 1 AND 500),
    ADD CONSTRAINT entities_merged_into_not_self CHECK (merged_into <> id),
    ADD CONSTRAINT entities_merged_pair CHECK ((merged_into IS NULL) = (merged_at IS NULL));

ALTER TABLE sigledger.entity_aliases
    ADD CONSTRAINT entity_aliases_alias_trimmed CHECK (alias = btrim(alias) AND length(alias) BETWEEN 1 AND 500);

-- opportunities ---------------------------------------------------------------------------------------------
ALTER TABLE sigledger.opportunities
    ADD COLUMN IF NOT EXISTS description text,
    ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'open',
    ADD COLUMN IF NOT EXISTS score numeric(12, 4),
    ADD COLUMN IF NOT EXISTS tags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS metadata jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS merged_into uuid REFERENCES sigledger.opportunities (id),
    ADD COLUMN IF NOT EXISTS merged_at timestamptz,
    ADD CONSTRAINT opportunities_title_not_blank CHECK (length(btrim(title)) BETWEEN 1 AND 500),
    ADD CONSTRAINT opportunities_status_known CHECK (status IN ('open', 'qualified', 'won', 'lost', 'archived')),
    -- numeric(12,4) already rejects Infinity; NaN passes a plain range check, so exclude it by name.
    ADD CONSTRAINT opportunities_score_range CHECK (score <> 'NaN' AND score >= 0),
    ADD CONSTRAINT opportunities_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object'),
    ADD CONSTRAINT opportunities_merged_into_not_self CHECK (merged_into <> id),
    ADD CONSTRAINT opportunities_merged_pair CHECK ((merged_into IS NULL) = (merged_at IS NULL));

-- configuration: what ingestion does with a mention that matches no alias ---------------------------------
CREATE TABLE sigledger.ingest_settings (
    singleton boolean PRIMARY KEY DEFAULT true CONSTRAINT ingest_settings_singleton_true CHECK (singleton),
    unknown_entity_policy text NOT NULL DEFAULT 'create'
        CONSTRAINT ingest_settings_unknown_entity_policy_known CHECK (unknown_entity_policy IN ('create', 'review')),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sigledger.ingest_settings DEFAULT VALUES;

-- review queue for unknown mentions when the policy is 'review' -------------------------------------------
CREATE TABLE sigledger.entity_review_queue (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    signal_id uuid NOT NULL REFERENCES sigledger.signals (id),
    mention text NOT NULL CONSTRAINT entity_review_queue_mention_trimmed CHECK (mention = btrim(mention) AND length(mention) BETWEEN 1 AND 500),
    status text NOT NULL DEFAULT 'pending'
        CONSTRAINT entity_review_queue_status_known CHECK (status IN ('pending', 'resolved', 'dismissed')),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- one queue row per (signal, mention): a replayed batch cannot queue the same mention twice.
CREATE UNIQUE INDEX entity_review_queue_signal_mention_key ON sigledger.entity_review_queue (signal_id, lower(mention));

-- merge history ---------------------------------------------------------------------------------------------
CREATE TABLE sigledger.opportunity_merges (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_id uuid NOT NULL REFERENCES sigledger.opportunities (id),
    source_ids uuid[] NOT NULL CONSTRAINT opportunity_merges_source_ids_not_empty CHECK (cardinality(source_ids) > 0),
    moved_links integer NOT NULL CONSTRAINT opportunity_merges_moved_links_range CHECK (moved_links >= 0),
    duplicate_links integer NOT NULL CONSTRAINT opportunity_merges_duplicate_links_range CHECK (duplicate_links >= 0),
    target_before jsonb NOT NULL,
    target_after jsonb NOT NULL,
    merged_at timestamptz NOT NULL DEFAULT now(),
    merged_by text NOT NULL DEFAULT session_user,
    application_name text NOT NULL DEFAULT current_setting('application_name')
);
CREATE INDEX opportunity_merges_target_id_idx ON sigledger.opportunity_merges (target_id);
CREATE INDEX opportunity_merges_source_ids_idx ON sigledger.opportunity_merges USING gin (source_ids);

CREATE TABLE sigledger.entity_merges (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_id uuid NOT NULL REFERENCES sigledger.entities (id),
    source_ids uuid[] NOT NULL CONSTRAINT entity_merges_source_ids_not_empty CHECK (cardinality(source_ids) > 0),
    moved_aliases integer NOT NULL CONSTRAINT entity_merges_moved_aliases_range CHECK (moved_aliases >= 0),
    moved_links integer NOT NULL CONSTRAINT entity_merges_moved_links_range CHECK (moved_links >= 0),
    duplicate_links integer NOT NULL CONSTRAINT entity_merges_duplicate_links_range CHECK (duplicate_links >= 0),
    merged_at timestamptz NOT NULL DEFAULT now(),
    merged_by text NOT NULL DEFAULT session_user,
    application_name text NOT NULL DEFAULT current_setting('application_name')
);
CREATE INDEX entity_merges_target_id_idx ON sigledger.entity_merges (target_id);
CREATE INDEX entity_merges_source_ids_idx ON sigledger.entity_merges USING gin (source_ids);
