-- Outbox delivery for the Neo4j projection: claim, acknowledge, fail with backoff, dead rows, status.
--
-- A sync worker runs one Postgres transaction per batch:
--   _graph_claim -> _graph_snapshot -> (write to Neo4j) -> _graph_ack / _graph_fail -> COMMIT.
-- The claimed rows stay row-locked (FOR UPDATE SKIP LOCKED) and their aggregates advisory-locked until that
-- COMMIT, so a worker that dies mid-batch (even SIGKILL) simply releases them: its backend rolls back and
-- the rows are claimable again. Nothing is ever claimed by an `id > last seen` high-water mark, which would
-- skip rows whose transactions commit late.
--
-- Internal functions (leading underscore): the sync worker and the operator CLI call them with the
-- owner's connection; the app role cannot acknowledge or purge projection work.

-- _graph_lock_key: the advisory-lock key (pair form) of one aggregate. The pair form never collides with
-- the single-bigint advisory locks other parts of the system take.
CREATE OR REPLACE FUNCTION sigledger._graph_try_lock(p_aggregate_type text, p_aggregate_id uuid)
RETURNS boolean
LANGUAGE sql
VOLATILE
SET search_path = sigledger, pg_temp
AS $$
    SELECT pg_try_advisory_xact_lock(hashtext('sigledger.graph'),
                                     hashtext(p_aggregate_type || ':' || p_aggregate_id::text));
$$;
COMMENT ON FUNCTION sigledger._graph_try_lock(text, uuid) IS
    'Internal: transaction-scoped try-lock on one aggregate, so at most one sync worker projects it at a time.';

-- _graph_claim: up to p_limit due, live outbox rows, locked for this transaction.
-- Rows whose aggregate another worker is projecting right now are left alone (still locked by us until
-- COMMIT, then claimable again): one aggregate is never written by two workers at once, so a worker always
-- projects a snapshot at least as new as the previous writer's.
CREATE OR REPLACE FUNCTION sigledger._graph_claim(p_limit integer)
RETURNS TABLE (id bigint, aggregate_type text, aggregate_id uuid, event_type text, attempts bigint,
               created_at timestamptz)
LANGUAGE plpgsql
VOLATILE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 10000 THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('graph claim batch size must be between 1 and 10000, got %s', p_limit);
    END IF;
    RETURN QUERY
    WITH claimed AS MATERIALIZED (
        -- SKIP LOCKED: workers never wait for each other, each takes the next rows nobody holds.
        SELECT o.id, o.aggregate_type, o.aggregate_id, o.event_type, o.attempts, o.created_at
          FROM outbox o
         WHERE o.dead_at IS NULL
           AND o.next_attempt_at <= clock_timestamp()
         ORDER BY o.next_attempt_at, o.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), aggregates AS MATERIALIZED (
        SELECT DISTINCT c.aggregate_type, c.aggregate_id FROM claimed c
    ), mine AS MATERIALIZED (
        -- Evaluated once per distinct aggregate of the batch (MATERIALIZED keeps the try-lock from being
        -- pushed into a scan that would lock aggregates we do not return).
        SELECT a.aggregate_type, a.aggregate_id
          FROM aggregates a
         WHERE _graph_try_lock(a.aggregate_type, a.aggregate_id)
    )
    SELECT c.id, c.aggregate_type, c.aggregate_id, c.event_type, c.attempts, c.created_at
      FROM claimed c
      JOIN mine m ON m.aggregate_type = c.aggregate_type AND m.aggregate_id = c.aggregate_id
     ORDER BY c.id;
END
$$;
COMMENT ON FUNCTION sigledger._graph_claim(integer) IS
    'Internal: claims up to p_limit due outbox rows (FOR UPDATE SKIP LOCKED + per-aggregate try-lock) for the '
    'current transaction.
SQLSTATE: 22023';

-- _graph_ack: the rows were projected; they leave the outbox.
CREATE OR REPLACE FUNCTION sigledger._graph_ack(p_ids bigint[])
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    DELETE FROM outbox o WHERE o.id = ANY (p_ids);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION sigledger._graph_ack(bigint[]) IS
    'Internal: removes outbox rows that were projected into Neo4j; returns how many.';

-- _graph_fail: the rows could not be projected because of their own data (not because Neo4j was down:
-- the worker does not charge an outage to the rows). Each gets one more attempt, an exponential backoff
-- with jitter, and the dead state once p_max_attempts is reached; dead rows are never claimed again until
-- an operator retries them, and they block nothing else.
CREATE OR REPLACE FUNCTION sigledger._graph_fail(
    p_ids bigint[],
    p_error text,
    p_max_attempts integer DEFAULT 8,
    p_base_delay interval DEFAULT '1 second',
    p_max_delay interval DEFAULT '10 minutes'
)
RETURNS TABLE (id bigint, attempts bigint, dead boolean, next_attempt_at timestamptz)
LANGUAGE plpgsql
VOLATILE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_max_attempts IS NULL OR p_max_attempts < 1 THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('max attempts must be at least 1, got %s', p_max_attempts);
    END IF;
    IF p_base_delay IS NULL OR p_base_delay < interval '0' OR p_max_delay IS NULL OR p_max_delay < p_base_delay
    THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('backoff delays must satisfy 0 <= base (%s) <= max (%s)', p_base_delay, p_max_delay);
    END IF;
    RETURN QUERY
    UPDATE outbox o
       SET attempts = o.attempts + 1,
           last_error = left(coalesce(p_error, 'unknown error'), 4000),
           -- "Equal jitter": half the capped exponential delay plus a random part of the other half, so
           -- rows that failed together do not come back together.
           next_attempt_at = clock_timestamp()
               + least(p_max_delay, p_base_delay * power(2, least(o.attempts, 30)))
                 * (0.5 + random() * 0.5),
           dead_at = CASE WHEN o.attempts + 1 >= p_max_attempts THEN clock_timestamp() END
     WHERE o.id = ANY (p_ids)
       -- (IS TRUE: the rows by their primary key; a plain dead_at IS NULL matches the predicate of
       -- idx_outbox_claimable, and with statistics taken on a drained outbox the planner scanned that whole
       -- index, the backlog, per call: tests/core/test_index_plans.py)
       AND (o.dead_at IS NULL) IS TRUE
    RETURNING o.id, o.attempts, o.dead_at IS NOT NULL, o.next_attempt_at;
END
$$;
COMMENT ON FUNCTION sigledger._graph_fail(bigint[], text, integer, interval, interval) IS
    'Internal: records a failed projection attempt (backoff with jitter; dead after p_max_attempts).
SQLSTATE: 22023';

-- graph_outbox_status: what an operator (or a metrics scrape) watches.
CREATE OR REPLACE FUNCTION sigledger.graph_outbox_status()
RETURNS TABLE (pending bigint, due bigint, retrying bigint, dead bigint, oldest_pending_age interval,
               oldest_dead_age interval)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
    SELECT count(*) FILTER (WHERE o.dead_at IS NULL),
           count(*) FILTER (WHERE o.dead_at IS NULL AND o.next_attempt_at <= clock_timestamp()),
           count(*) FILTER (WHERE o.dead_at IS NULL AND o.attempts > 0),
           count(*) FILTER (WHERE o.dead_at IS NOT NULL),
           clock_timestamp() - min(o.created_at) FILTER (WHERE o.dead_at IS NULL),
           clock_timestamp() - min(o.dead_at) FILTER (WHERE o.dead_at IS NOT NULL)
      FROM outbox o;
$$;
COMMENT ON FUNCTION sigledger.graph_outbox_status() IS
    'Neo4j projection backlog: pending rows (due now, retrying after a failure), dead rows, and the age of '
    'the oldest pending and oldest dead row.';

-- _graph_dead_list: dead rows, oldest first.
CREATE OR REPLACE FUNCTION sigledger._graph_dead_list(p_limit integer DEFAULT 100)
RETURNS TABLE (id bigint, aggregate_type text, aggregate_id uuid, event_type text, attempts bigint,
               created_at timestamptz, dead_at timestamptz, last_error text)
LANGUAGE sql
STABLE
SET search_path = sigledger, pg_temp
AS $$
    SELECT o.id, o.aggregate_type, o.aggregate_id, o.event_type, o.attempts, o.created_at, o.dead_at,
           o.last_error
      FROM outbox o
     WHERE o.dead_at IS NOT NULL
     ORDER BY o.dead_at, o.id
     LIMIT greatest(coalesce(p_limit, 100), 0);
$$;
COMMENT ON FUNCTION sigledger._graph_dead_list(integer) IS 'Internal: dead outbox rows, oldest first.';

-- _graph_dead_retry: dead rows (all, or the given ids) become due again with a fresh attempt count.
CREATE OR REPLACE FUNCTION sigledger._graph_dead_retry(p_ids bigint[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    IF p_ids IS NULL THEN
        UPDATE outbox o
           SET dead_at = NULL, attempts = 0, next_attempt_at = clock_timestamp()
         WHERE o.dead_at IS NOT NULL;
    ELSE
        UPDATE outbox o
           SET dead_at = NULL, attempts = 0, next_attempt_at = clock_timestamp()
         WHERE o.id = ANY (p_ids)
           -- (IS TRUE: the rows by their primary key; a plain dead_at IS NOT NULL matches the predicate of
           -- idx_outbox_dead, and with statistics taken before rows died the planner scanned every dead row
           -- per call: tests/core/test_index_plans.py)
           AND (o.dead_at IS NOT NULL) IS TRUE;
    END IF;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM pg_notify('sigledger_outbox', '');
    END IF;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION sigledger._graph_dead_retry(bigint[]) IS
    'Internal: makes dead outbox rows (all when p_ids is NULL) due again, attempts reset; returns how many.';

-- _graph_dead_purge: drop dead rows (all, or the given ids). Their aggregates stay as Neo4j last saw
-- them until the next change or a `graph rebuild`.
CREATE OR REPLACE FUNCTION sigledger._graph_dead_purge(p_ids bigint[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    IF p_ids IS NULL THEN
        DELETE FROM outbox o WHERE o.dead_at IS NOT NULL;
    ELSE
        -- (IS TRUE: by the primary key, as _graph_dead_retry)
        DELETE FROM outbox o WHERE o.id = ANY (p_ids) AND (o.dead_at IS NOT NULL) IS TRUE;
    END IF;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION sigledger._graph_dead_purge(bigint[]) IS
    'Internal: deletes dead outbox rows (all when p_ids is NULL); returns how many.';

-- _graph_enqueue: ask for a re-projection of the given aggregates (rebuild, repair of a verify drift).
-- Goes through the outbox like any change, so it is claimed, locked, versioned and retried the same way.
CREATE OR REPLACE FUNCTION sigledger._graph_enqueue(p_aggregate_type text, p_ids uuid[],
                                                    p_event_type text DEFAULT 'graph.refresh')
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_aggregate_type IS NULL OR p_aggregate_type NOT IN ('entity', 'signal', 'opportunity') THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('unknown aggregate type %L (expected entity, signal or opportunity)',
                             p_aggregate_type);
    END IF;
    RETURN _outbox_emit_many(p_aggregate_type, p_ids, p_event_type);
END
$$;
COMMENT ON FUNCTION sigledger._graph_enqueue(text, uuid[], text) IS
    'Internal: enqueues a refresh of the given aggregates for the Neo4j projection; returns how many rows.
SQLSTATE: 22023';

-- _graph_enqueue_all: a refresh for every live aggregate (graph rebuild).
CREATE OR REPLACE FUNCTION sigledger._graph_enqueue_all(p_event_type text DEFAULT 'graph.rebuild')
RETURNS TABLE (aggregate_type text, enqueued bigint)
LANGUAGE plpgsql
VOLATILE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    RETURN QUERY
    WITH ins AS (
        INSERT INTO outbox (aggregate_type, aggregate_id, event_type)
        SELECT 'entity', e.id, p_event_type FROM entities e WHERE e.merged_into IS NULL
        UNION ALL
        SELECT 'signal', s.id, p_event_type FROM signals s
        UNION ALL
        SELECT 'opportunity', op.id, p_event_type FROM opportunities op WHERE op.merged_into IS NULL
        RETURNING outbox.aggregate_type
    )
    SELECT i.aggregate_type, count(*) FROM ins i GROUP BY i.aggregate_type ORDER BY 1;
    PERFORM pg_notify('sigledger_outbox', '');
END
$$;
COMMENT ON FUNCTION sigledger._graph_enqueue_all(text) IS
    'Internal: enqueues a refresh of every live entity, signal and opportunity (graph rebuild).';

-- The sync worker runs as sigledger_graph, which holds no table privilege: the functions it calls run as
-- their owner (search_path pinned above). Which role may call which is declared in 900_grants.sql.
ALTER FUNCTION sigledger._graph_claim(integer) SECURITY DEFINER;
ALTER FUNCTION sigledger._graph_ack(bigint[]) SECURITY DEFINER;
ALTER FUNCTION sigledger._graph_fail(bigint[], text, integer, interval, interval) SECURITY DEFINER;
ALTER FUNCTION sigledger._graph_dead_list(integer) SECURITY DEFINER;
ALTER FUNCTION sigledger._graph_dead_retry(bigint[]) SECURITY DEFINER;
ALTER FUNCTION sigledger._graph_dead_purge(bigint[]) SECURITY DEFINER;
ALTER FUNCTION sigledger._graph_enqueue(text, uuid[], text) SECURITY DEFINER;
ALTER FUNCTION sigledger._graph_enqueue_all(text) SECURITY DEFINER;
