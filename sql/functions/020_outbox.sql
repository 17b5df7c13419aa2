-- _outbox_emit: write one outbox row in the caller's transaction, so the Neo4j projection sees exactly the
-- changes that committed. The NOTIFY wakes sync workers at commit (identical notifications in one transaction
-- are folded into one by PostgreSQL); workers also poll, so a lost notification only delays.
CREATE OR REPLACE FUNCTION sigledger._outbox_emit(
    p_aggregate_type text,
    p_aggregate_id uuid,
    p_event_type text,
    p_payload jsonb DEFAULT '{}'
)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
    VALUES (p_aggregate_type, p_aggregate_id, p_event_type, coalesce(p_payload, '{}'))
    RETURNING id INTO v_id;
    PERFORM pg_notify('sigledger_outbox', '');
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION sigledger._outbox_emit(text, uuid, text, jsonb) IS
    'Internal: records a change for the Neo4j projection in the current transaction.';

-- _outbox_emit_many: the same for a set of aggregates of one type (one row each, duplicates and NULLs
-- dropped, in id order), with one notification.
CREATE OR REPLACE FUNCTION sigledger._outbox_emit_many(
    p_aggregate_type text,
    p_aggregate_ids uuid[],
    p_event_type text,
    p_payload jsonb DEFAULT '{}'
)
RETURNS integer
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
    SELECT p_aggregate_type, u.id, p_event_type, coalesce(p_payload, '{}')
      FROM (SELECT DISTINCT x AS id FROM unnest(p_aggregate_ids) AS x WHERE x IS NOT NULL) u
     ORDER BY u.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM pg_notify('sigledger_outbox', '');
    END IF;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION sigledger._outbox_emit_many(text, uuid[], text, jsonb) IS
    'Internal: records a change of several aggregates of one type for the Neo4j projection (current transaction).';
