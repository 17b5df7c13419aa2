-- Which projection a Neo4j graph holds, and the operations around it (docs/graph.md, "Epochs" and
-- "Verify while workers run"). The table is sigledger.graph_projection (V8_040).

-- _graph_identity: this database's identity and epoch (the row is drawn at the first call). A sync worker
-- compares it with the graph's meta node before every write.
CREATE OR REPLACE FUNCTION sigledger._graph_identity()
RETURNS TABLE (database_id uuid, epoch bigint, written boolean)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT g.database_id, g.epoch, g.written FROM graph_projection g;
    IF NOT FOUND THEN
        -- First sync of this database. Two first calls at once: one inserts, the other waits for it and
        -- reads its row.
        INSERT INTO graph_projection (singleton) VALUES (true) ON CONFLICT (singleton) DO NOTHING;
        RETURN QUERY SELECT g.database_id, g.epoch, g.written FROM graph_projection g;
    END IF;
END
$$;
COMMENT ON FUNCTION sigledger._graph_identity() IS
    'Internal: this database''s Neo4j projection identity (database id, epoch, whether a graph holds it).';

-- _graph_mark_written: a graph now holds this epoch's projection (the worker's first write of the epoch).
-- From then on, a graph without the meta node was wiped or replaced, and sync refuses to write into it.
CREATE OR REPLACE FUNCTION sigledger._graph_mark_written(p_epoch bigint)
RETURNS boolean
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
    UPDATE graph_projection g SET written = true WHERE g.epoch = p_epoch AND NOT g.written RETURNING true;
$$;
COMMENT ON FUNCTION sigledger._graph_mark_written(bigint) IS
    'Internal: records that a graph holds the projection of epoch p_epoch.';

-- _graph_adopt: start a new epoch (graph rebuild). The version sequence moves above p_graph_version (the
-- highest version found in the graph), so every snapshot from now on is newer than anything the graph
-- holds, whatever database or backup wrote it. Returns the new epoch and its floor: no version at or below
-- the floor is ever handed out again, and the graph fences off writes below it.
CREATE OR REPLACE FUNCTION sigledger._graph_adopt(p_graph_version bigint)
RETURNS TABLE (database_id uuid, epoch bigint, floor_version bigint)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_floor bigint;
BEGIN
    IF p_graph_version IS NULL OR p_graph_version < 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('graph version must be a non-negative number, got %s',
                             coalesce(p_graph_version::text, 'NULL'));
    END IF;
    PERFORM _graph_identity();
    -- The row lock orders concurrent rebuilds: the second one starts the epoch after the first.
    UPDATE graph_projection g
       SET epoch = g.epoch + 1, written = true, epoch_started_at = clock_timestamp();
    v_floor := greatest(nextval('graph_sync_version_seq'), p_graph_version + 1);
    PERFORM setval('graph_sync_version_seq', v_floor);
    RETURN QUERY SELECT g.database_id, g.epoch, v_floor FROM graph_projection g;
END
$$;
COMMENT ON FUNCTION sigledger._graph_adopt(bigint) IS
    'Internal: starts a new projection epoch above graph version p_graph_version (graph rebuild).
SQLSTATE: 22023';

-- _graph_hold: for graph verify --consistent. Takes, for this transaction, the same per-aggregate lock a
-- sync worker takes to project an aggregate, and says what the outbox still holds for it. While held, no
-- worker writes the aggregate, so Neo4j can be compared with Postgres exactly: an aggregate with no pending
-- row must match; one that is not held or has pending rows is work in flight.
CREATE OR REPLACE FUNCTION sigledger._graph_hold(p_types text[], p_ids uuid[])
RETURNS TABLE (aggregate_type text, aggregate_id uuid, held boolean, pending bigint, dead bigint)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF coalesce(array_length(p_types, 1), 0) <> coalesce(array_length(p_ids, 1), 0) THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('p_types has %s elements but p_ids has %s', array_length(p_types, 1),
                             array_length(p_ids, 1));
    END IF;
    RETURN QUERY
    WITH keys AS MATERIALIZED (
        -- Locked in a fixed order, once per aggregate (MATERIALIZED: the try-lock runs exactly here).
        SELECT k.t, k.i, _graph_try_lock(k.t, k.i) AS held
          FROM (SELECT DISTINCT u.t, u.i FROM unnest(p_types, p_ids) AS u (t, i) ORDER BY 1, 2) k
    ), counts AS (
        -- One pass over the outbox for the whole page (it has no index by aggregate: it stays small).
        SELECT o.aggregate_type AS t, o.aggregate_id AS i,
               count(*) FILTER (WHERE o.dead_at IS NULL) AS pending,
               count(*) FILTER (WHERE o.dead_at IS NOT NULL) AS dead
          FROM outbox o
         WHERE o.aggregate_id = ANY (p_ids)
         GROUP BY 1, 2
    )
    SELECT k.t, k.i, k.held, coalesce(c.pending, 0), coalesce(c.dead, 0)
      FROM keys k
      LEFT JOIN counts c ON c.t = k.t AND c.i = k.i;
END
$$;
COMMENT ON FUNCTION sigledger._graph_hold(text[], uuid[]) IS
    'Internal: holds the projection lock of each aggregate for this transaction (when free) and counts its '
    'pending and dead outbox rows (graph verify --consistent).
SQLSTATE: 22023';
