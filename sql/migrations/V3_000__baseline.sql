-- sigledger:supersedes 05731c599daae5d41f1515ed4de2a8aa80e5d9b610def516e7d3d316a698a28e
-- Baseline: the roles, the schema and the tables the seed's system already had, designed as its DBA should
-- have: uuid keys, timestamptz, named constraints that reject what the seed's application code only hoped to
-- catch (negative, NaN and infinite numbers included: 'NaN'::numeric >= 0 is true, so every range check also
-- says `<> 'NaN'` and stays below 'Infinity').

-- Roles are cluster-wide and may already exist (another database, or a DBA who made them first from
-- `sigledger roles sql`). The runner creates or corrects them before any migration runs (only where they
-- differ from sigledger/migrate/roles.py); this block makes the file work on its own too (applied with psql
-- by a login with CREATEROLE). Groups are NOLOGIN and carry no settings: applications log in as member
-- logins, which carry the server-side timeouts (`sigledger role create-login`). Rewritten since its first
-- release, which made the groups LOGIN with settings and ran ALTER ROLE unconditionally (a deployer without
-- CREATEROLE could not run it); the roles are the runner's business now, so a database that ran the first
-- content is not drifted (header above).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sigledger_owner') THEN
        CREATE ROLE sigledger_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sigledger_app') THEN
        CREATE ROLE sigledger_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sigledger_readonly') THEN
        CREATE ROLE sigledger_readonly NOLOGIN;
    END IF;
    -- CREATE SCHEMA ... AUTHORIZATION needs membership; PostgreSQL 15 does not make a role's creator a member
    IF NOT pg_has_role(current_user, 'sigledger_owner', 'MEMBER') THEN
        EXECUTE format('GRANT sigledger_owner TO %I', current_user);
    END IF;
END
$roles$;

CREATE SCHEMA sigledger AUTHORIZATION sigledger_owner;
REVOKE ALL ON SCHEMA sigledger FROM PUBLIC;
GRANT USAGE ON SCHEMA sigledger TO sigledger_app, sigledger_readonly;

SET LOCAL ROLE sigledger_owner;

-- Functions are not executable by PUBLIC unless granted (sql/functions/900_grants.sql grants the API).
ALTER DEFAULT PRIVILEGES IN SCHEMA sigledger REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

CREATE TABLE sigledger.entities (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL,
    entity_type  text NOT NULL DEFAULT 'unknown',
    attributes   jsonb NOT NULL DEFAULT '{}',
    merged_into  uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    version      bigint NOT NULL DEFAULT 1,
    CONSTRAINT entities_name_length CHECK (length(btrim(name)) BETWEEN 1 AND 500),
    CONSTRAINT entities_entity_type_length CHECK (length(entity_type) BETWEEN 1 AND 100),
    CONSTRAINT entities_attributes_object CHECK (jsonb_typeof(attributes) = 'object'),
    CONSTRAINT entities_merged_into_fkey FOREIGN KEY (merged_into) REFERENCES sigledger.entities (id),
    CONSTRAINT entities_not_merged_into_self CHECK (merged_into IS DISTINCT FROM id)
);
COMMENT ON TABLE sigledger.entities IS 'Resolved (canonical) entities; merged losers keep a tombstone in merged_into.';

CREATE TABLE sigledger.entity_aliases (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    canonical_entity_id  uuid NOT NULL,
    alias                text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT entity_aliases_alias_length CHECK (length(btrim(alias)) BETWEEN 1 AND 500),
    CONSTRAINT entity_aliases_canonical_entity_id_fkey FOREIGN KEY (canonical_entity_id)
        REFERENCES sigledger.entities (id) ON DELETE CASCADE
);
COMMENT ON TABLE sigledger.entity_aliases IS 'Names under which an entity is mentioned; resolved by lower(alias).';

CREATE TABLE sigledger.signals (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source       text NOT NULL,
    external_id  text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    content      text,
    payload      jsonb NOT NULL DEFAULT '{}',
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    version      bigint NOT NULL DEFAULT 1,
    CONSTRAINT signals_source_length CHECK (length(btrim(source)) BETWEEN 1 AND 200),
    CONSTRAINT signals_external_id_length CHECK (length(btrim(external_id)) BETWEEN 1 AND 500),
    CONSTRAINT signals_payload_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT signals_occurred_at_sane CHECK (occurred_at > '2000-01-01' AND occurred_at < 'infinity'),
    -- Ingestion is idempotent per (source, external_id): the backstop for two sessions ingesting at once.
    CONSTRAINT signals_source_external_id_key UNIQUE (source, external_id)
);
COMMENT ON TABLE sigledger.signals IS 'Ingested signals, one row per (source, external_id).';

CREATE TABLE sigledger.signal_entities (
    signal_id   uuid NOT NULL,
    entity_id   uuid NOT NULL,
    mention     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT signal_entities_pkey PRIMARY KEY (signal_id, entity_id),
    CONSTRAINT signal_entities_signal_id_fkey FOREIGN KEY (signal_id)
        REFERENCES sigledger.signals (id) ON DELETE CASCADE,
    CONSTRAINT signal_entities_entity_id_fkey FOREIGN KEY (entity_id)
        REFERENCES sigledger.entities (id) ON DELETE CASCADE
);
COMMENT ON TABLE sigledger.signal_entities IS 'Which entities a signal mentions.';

CREATE TABLE sigledger.opportunities (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title        text NOT NULL,
    description  text,
    status       text NOT NULL DEFAULT 'open',
    score        numeric(7, 4),
    value_usd    numeric(14, 2),
    attributes   jsonb NOT NULL DEFAULT '{}',
    merged_into  uuid,
    merged_at    timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    version      bigint NOT NULL DEFAULT 1,
    CONSTRAINT opportunities_title_length CHECK (length(btrim(title)) BETWEEN 1 AND 500),
    CONSTRAINT opportunities_status_valid CHECK (status IN ('open', 'won', 'lost', 'merged')),
    CONSTRAINT opportunities_score_range CHECK (score IS NULL OR (score <> 'NaN' AND score BETWEEN 0 AND 100)),
    CONSTRAINT opportunities_value_usd_range CHECK (value_usd IS NULL OR (value_usd <> 'NaN' AND value_usd >= 0)),
    CONSTRAINT opportunities_attributes_object CHECK (jsonb_typeof(attributes) = 'object'),
    CONSTRAINT opportunities_merged_into_fkey FOREIGN KEY (merged_into) REFERENCES sigledger.opportunities (id),
    CONSTRAINT opportunities_not_merged_into_self CHECK (merged_into IS DISTINCT FROM id),
    -- A tombstone is exactly a row with status 'merged', a winner and a time.
    CONSTRAINT opportunities_tombstone_consistent CHECK (
        (status = 'merged') = (merged_into IS NOT NULL) AND (merged_into IS NULL) = (merged_at IS NULL))
);
COMMENT ON TABLE sigledger.opportunities IS 'Opportunities; a merged one keeps a tombstone (merged_into).';

CREATE TABLE sigledger.agent_registry (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text NOT NULL,
    budget_limit_usd  numeric(14, 6) NOT NULL DEFAULT 0,
    current_cost_usd  numeric(14, 6) NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agent_registry_name_key UNIQUE (name),
    CONSTRAINT agent_registry_name_length CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT agent_registry_budget_limit_usd_range CHECK (
        budget_limit_usd <> 'NaN' AND budget_limit_usd >= 0 AND budget_limit_usd <= 1000000000),
    CONSTRAINT agent_registry_current_cost_usd_range CHECK (
        current_cost_usd <> 'NaN' AND current_cost_usd >= 0 AND current_cost_usd <= 1000000000)
);
COMMENT ON TABLE sigledger.agent_registry IS 'AI agents and their spend (the seed''s table).';

CREATE TABLE sigledger.llm_cost_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key  text NOT NULL,
    agent_id         uuid NOT NULL,
    model            text NOT NULL,
    provider         text NOT NULL,
    tokens_input     bigint NOT NULL DEFAULT 0,
    tokens_output    bigint NOT NULL DEFAULT 0,
    cost_usd         numeric(14, 6) NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT llm_cost_log_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT llm_cost_log_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES sigledger.agent_registry (id),
    CONSTRAINT llm_cost_log_idempotency_key_length CHECK (length(btrim(idempotency_key)) BETWEEN 1 AND 200),
    CONSTRAINT llm_cost_log_model_length CHECK (length(btrim(model)) BETWEEN 1 AND 200),
    CONSTRAINT llm_cost_log_provider_length CHECK (length(btrim(provider)) BETWEEN 1 AND 200),
    CONSTRAINT llm_cost_log_tokens_nonnegative CHECK (tokens_input >= 0 AND tokens_output >= 0),
    CONSTRAINT llm_cost_log_cost_usd_range CHECK (cost_usd <> 'NaN' AND cost_usd >= 0 AND cost_usd <= 1000000),
    CONSTRAINT llm_cost_log_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT llm_cost_log_created_at_sane CHECK (created_at > '2020-01-01' AND created_at < 'infinity')
);
COMMENT ON TABLE sigledger.llm_cost_log IS 'Append-only ledger of LLM call costs.';
