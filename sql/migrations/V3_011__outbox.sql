-- Transactional outbox for the Neo4j projection: every change Neo4j must see writes a row here in the same
-- transaction. Workers claim rows with FOR UPDATE SKIP LOCKED (never by an id high-water mark: a row whose
-- transaction commits late would be skipped forever).
CREATE TABLE sigledger.outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate_type   text NOT NULL,
    aggregate_id     uuid NOT NULL,
    event_type       text NOT NULL,
    payload          jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts         bigint NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_error       text,
    dead_at          timestamptz,
    CONSTRAINT outbox_aggregate_type_valid CHECK (aggregate_type IN ('entity', 'signal', 'opportunity')),
    CONSTRAINT outbox_event_type_length CHECK (length(event_type) BETWEEN 1 AND 100),
    CONSTRAINT outbox_payload_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT outbox_attempts_nonnegative CHECK (attempts >= 0)
);
-- Claim order for live rows; dead rows are listed by their own index. The table is new and empty: a plain
-- CREATE INDEX in this transaction blocks nothing.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX idx_outbox_claimable ON sigledger.outbox (next_attempt_at, id) WHERE dead_at IS NULL;
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX idx_outbox_dead ON sigledger.outbox (dead_at) WHERE dead_at IS NOT NULL;
COMMENT ON TABLE sigledger.outbox IS 'Changes waiting to be projected into Neo4j (transactional outbox).';
