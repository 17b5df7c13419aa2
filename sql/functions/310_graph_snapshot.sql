-- What Neo4j must show for a set of aggregates, read from Postgres *now* (the worker never trusts the outbox
-- payload: it re-reads the current state, so replays, duplicates and out-of-order events are harmless).
--
-- Graph model (docs/graph.md):
--   (:Entity {id, name, entity_type, aliases, ...})
--   (:Signal {id, source, external_id, ...})-[:MENTIONS]->(:Entity)
--   (:Opportunity {id, title, status, ...})-[:INCLUDES]->(:Signal)
-- Every node also carries sync_version (see sigledger.graph_sync_version_seq).

-- _graph_final_winner: where a merged entity or opportunity ended up (merges can chain). NULL when the
-- chain is broken or loops (the snapshot reports that aggregate as an error: a poison row).
CREATE OR REPLACE FUNCTION sigledger._graph_final_winner(p_aggregate_type text, p_id uuid)
RETURNS uuid
LANGUAGE plpgsql
STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_current uuid := p_id;
    v_next uuid;
    v_hops integer := 0;
BEGIN
    LOOP
        IF p_aggregate_type = 'entity' THEN
            SELECT e.merged_into INTO v_next FROM entities e WHERE e.id = v_current;
        ELSIF p_aggregate_type = 'opportunity' THEN
            SELECT op.merged_into INTO v_next FROM opportunities op WHERE op.id = v_current;
        ELSE
            RETURN NULL;
        END IF;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        IF v_next IS NULL THEN
            RETURN v_current;
        END IF;
        v_current := v_next;
        v_hops := v_hops + 1;
        IF v_hops > 100 THEN
            RETURN NULL;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION sigledger._graph_final_winner(text, uuid) IS
    'Internal: the live end of a merge chain (NULL if the chain is broken or loops).';

-- _graph_snapshot: one row per requested aggregate, plus one per merge winner it pulled in.
--   state 'present'  -> upsert the node with props and exactly these links
--   state 'absent'   -> delete the node; with winner_id: it was merged, move its relationships to the winner
--   state 'deferred' -> another worker is projecting the merge winner right now; leave the row for later
--   state 'error'    -> cannot be projected (error says why): the worker fails those outbox rows
-- version comes from graph_sync_version_seq, taken before any read: in READ COMMITTED each statement of a
-- VOLATILE function sees a fresh snapshot, so every read below is at least as new as the version says.
CREATE OR REPLACE FUNCTION sigledger._graph_snapshot(p_types text[], p_ids uuid[])
RETURNS TABLE (aggregate_type text, aggregate_id uuid, state text, version bigint, props jsonb, links uuid[],
               winner_id uuid, error text)
LANGUAGE plpgsql
VOLATILE
SET search_path = sigledger, pg_temp
SET "TimeZone" = 'UTC'  -- timestamps become text properties: one fixed zone, so verify compares like with like
AS $$
DECLARE
    v_version bigint := nextval('graph_sync_version_seq');
    v_types text[];
    v_ids uuid[];
    v_winners_t text[] := '{}';
    v_winners_i uuid[] := '{}';
    v_deferred_t text[] := '{}';
    v_deferred_i uuid[] := '{}';
    v_broken_t text[] := '{}';
    v_broken_i uuid[] := '{}';
    v_loser record;
    v_winner uuid;
BEGIN
    IF coalesce(array_length(p_types, 1), 0) <> coalesce(array_length(p_ids, 1), 0) THEN
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('p_types has %s elements but p_ids has %s', array_length(p_types, 1),
                             array_length(p_ids, 1));
    END IF;
    SELECT coalesce(array_agg(k.t), '{}'), coalesce(array_agg(k.i), '{}')
      INTO v_types, v_ids
      FROM (SELECT DISTINCT u.t, u.i FROM unnest(p_types, p_ids) AS u (t, i)) k;

    -- Merged losers: the winner is refreshed in the same Neo4j transaction that deletes the loser, so
    -- nobody ever sees the loser's links missing from both. The winner must not be projected by another
    -- worker at the same time: try-lock it, or defer the loser.
    -- (IS TRUE: each by its primary key; a plain merged_into IS NOT NULL matches the predicate of the tombstones'
    -- partial index, which the planner then scanned once per row of the batch: tests/core/test_index_plans.py)
    FOR v_loser IN
        SELECT 'entity' AS t, e.id AS i
          FROM unnest(v_types, v_ids) u (t, i)
          JOIN entities e ON e.id = u.i
         WHERE u.t = 'entity' AND (e.merged_into IS NOT NULL) IS TRUE
        UNION ALL
        SELECT 'opportunity', op.id
          FROM unnest(v_types, v_ids) u (t, i)
          JOIN opportunities op ON op.id = u.i
         WHERE u.t = 'opportunity' AND (op.merged_into IS NOT NULL) IS TRUE
    LOOP
        v_winner := _graph_final_winner(v_loser.t, v_loser.i);
        IF v_winner IS NULL THEN
            v_broken_t := v_broken_t || v_loser.t::text;
            v_broken_i := v_broken_i || v_loser.i;
        ELSIF _graph_try_lock(v_loser.t, v_winner) THEN
            -- Re-entrant: true as well when this transaction already holds it (the winner is in the batch).
            v_winners_t := v_winners_t || v_loser.t::text;
            v_winners_i := v_winners_i || v_winner;
        ELSE
            v_deferred_t := v_deferred_t || v_loser.t::text;
            v_deferred_i := v_deferred_i || v_loser.i;
        END IF;
    END LOOP;

    RETURN QUERY
    WITH keys AS MATERIALIZED (
        SELECT DISTINCT u.t, u.i
          FROM (SELECT * FROM unnest(v_types, v_ids) UNION ALL SELECT * FROM unnest(v_winners_t, v_winners_i))
               AS u (t, i)
    ), flagged AS (
        SELECT k.t, k.i,
               EXISTS (SELECT FROM unnest(v_deferred_t, v_deferred_i) d (t, i) WHERE d.t = k.t AND d.i = k.i)
                   AS deferred,
               EXISTS (SELECT FROM unnest(v_broken_t, v_broken_i) b (t, i) WHERE b.t = k.t AND b.i = k.i)
                   AS broken
          FROM keys k
    ), snap (t, i, state, version, r, links, winner_id, error) AS (
        SELECT 'entity'::text, f.i,
               CASE WHEN f.broken THEN 'error' WHEN f.deferred THEN 'deferred'
                    WHEN e.id IS NULL OR e.merged_into IS NOT NULL THEN 'absent' ELSE 'present' END,
               v_version,
               CASE WHEN e.id IS NOT NULL AND e.merged_into IS NULL AND NOT f.deferred THEN
                   to_jsonb(e) - 'merged_into' || jsonb_build_object('aliases',
                       (SELECT coalesce(jsonb_agg(a.alias ORDER BY a.alias, a.id), '[]')
                          FROM entity_aliases a WHERE a.canonical_entity_id = e.id))
               END,
               NULL::uuid[],
               CASE WHEN e.merged_into IS NOT NULL AND NOT f.broken THEN _graph_final_winner('entity', e.id) END,
               CASE WHEN f.broken THEN format('entity %s: merge chain from merged_into %s is broken or loops',
                                              f.i, e.merged_into) END
          FROM flagged f
          LEFT JOIN entities e ON e.id = f.i
         WHERE f.t = 'entity'
        UNION ALL
        SELECT 'signal'::text, f.i,
               CASE WHEN s.id IS NULL THEN 'absent' ELSE 'present' END,
               v_version,
               CASE WHEN s.id IS NOT NULL THEN to_jsonb(s) END,
               CASE WHEN s.id IS NOT NULL THEN coalesce(sl.links, '{}') END,
               NULL::uuid, NULL::text
          FROM flagged f
          LEFT JOIN signals s ON s.id = f.i
          -- Per row through the indexes: linear in the batch, independent of the table's size. (A CTE joined
          -- here was rescanned per row by a nested loop: quadratic in the batch.)
          LEFT JOIN LATERAL (
              -- Links always point at live entities: merge_entities moves them to the target in the transaction
              -- that makes the sources tombstones, and a backstop trigger (200) refuses a link to a tombstone.
              -- (It emits an event for every signal it relinks: see docs/graph.md.)
              SELECT array_agg(se.entity_id ORDER BY se.entity_id) AS links
                FROM signal_entities se
               WHERE se.signal_id = s.id
          ) sl ON s.id IS NOT NULL
         WHERE f.t = 'signal'
        UNION ALL
        SELECT 'opportunity'::text, f.i,
               CASE WHEN f.broken THEN 'error' WHEN f.deferred THEN 'deferred'
                    WHEN op.id IS NULL OR op.merged_into IS NOT NULL THEN 'absent' ELSE 'present' END,
               v_version,
               CASE WHEN op.id IS NOT NULL AND op.merged_into IS NULL THEN
                   to_jsonb(op) - '{merged_into,merged_at}'::text[]
               END,
               CASE WHEN op.id IS NOT NULL AND op.merged_into IS NULL THEN coalesce(ol.links, '{}') END,
               CASE WHEN op.merged_into IS NOT NULL AND NOT f.broken THEN _graph_final_winner('opportunity', op.id)
               END,
               CASE WHEN f.broken THEN format('opportunity %s: merge chain from merged_into %s is broken or loops',
                                              f.i, op.merged_into) END
          FROM flagged f
          LEFT JOIN opportunities op ON op.id = f.i
          LEFT JOIN LATERAL (
              SELECT array_agg(os.signal_id ORDER BY os.signal_id) AS links
                FROM opportunity_signals os
               WHERE os.opportunity_id = op.id
          ) ol ON op.id IS NOT NULL
         WHERE f.t = 'opportunity'
        UNION ALL
        -- Anything else is a row the projection does not understand (the table's CHECK should prevent it).
        SELECT f.t, f.i, 'error', v_version, NULL::jsonb, NULL::uuid[], NULL::uuid,
               format('unknown aggregate type %L', f.t)
          FROM flagged f
         WHERE f.t NOT IN ('entity', 'signal', 'opportunity')
    )
    -- The row as Neo4j properties, computed once here for every kind (inline: a function call per row,
    -- with its search_path set and reset, cost a third more). Neo4j stores scalars and lists of scalars
    -- only: objects and non-string arrays become their JSON text; NULLs are dropped (Neo4j has no NULL
    -- property). Timestamps are text in UTC (the function's TimeZone).
    SELECT sn.t, sn.i, sn.state, sn.version, p.props, sn.links, sn.winner_id, sn.error
      FROM snap sn
      LEFT JOIN LATERAL (
          SELECT coalesce(jsonb_object_agg(e.key,
                     CASE
                         WHEN jsonb_typeof(e.value) = 'object' THEN to_jsonb(e.value::text)
                         WHEN jsonb_typeof(e.value) = 'array'
                              AND EXISTS (SELECT FROM jsonb_array_elements(e.value) x
                                           WHERE jsonb_typeof(x) <> 'string')
                             THEN to_jsonb(e.value::text)
                         ELSE e.value
                     END), '{}'::jsonb) AS props
            FROM jsonb_each(sn.r) e
           WHERE jsonb_typeof(e.value) <> 'null'
      ) p ON sn.r IS NOT NULL;
END
$$;
COMMENT ON FUNCTION sigledger._graph_snapshot(text[], uuid[]) IS
    'Internal: the current Postgres state of the given aggregates as Neo4j should show it, stamped with a '
    'sync version taken before the read.
SQLSTATE: 22023';

-- Replaced by the LATERAL above (dropped after the new _graph_snapshot, which no longer calls it).
DROP FUNCTION IF EXISTS sigledger._graph_props(jsonb, text[]);

-- _graph_live_ids: a page of live aggregate ids, in id order (graph verify walks Postgres with it).
CREATE OR REPLACE FUNCTION sigledger._graph_live_ids(p_aggregate_type text, p_after uuid, p_limit integer)
RETURNS SETOF uuid
LANGUAGE plpgsql
STABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_aggregate_type = 'entity' THEN
        RETURN QUERY SELECT e.id FROM entities e
                      WHERE e.merged_into IS NULL AND (p_after IS NULL OR e.id > p_after)
                      ORDER BY e.id LIMIT p_limit;
    ELSIF p_aggregate_type = 'signal' THEN
        RETURN QUERY SELECT s.id FROM signals s
                      WHERE (p_after IS NULL OR s.id > p_after)
                      ORDER BY s.id LIMIT p_limit;
    ELSIF p_aggregate_type = 'opportunity' THEN
        RETURN QUERY SELECT op.id FROM opportunities op
                      WHERE op.merged_into IS NULL AND (p_after IS NULL OR op.id > p_after)
                      ORDER BY op.id LIMIT p_limit;
    ELSE
        RAISE EXCEPTION USING
            ERRCODE = '22023',
            MESSAGE = format('unknown aggregate type %L (expected entity, signal or opportunity)',
                             p_aggregate_type);
    END IF;
END
$$;
COMMENT ON FUNCTION sigledger._graph_live_ids(text, uuid, integer) IS
    'Internal: live aggregate ids after p_after, in id order (for graph verify).
SQLSTATE: 22023';

-- Called by the sync worker as sigledger_graph (see 300_graph_outbox.sql and 900_grants.sql).
ALTER FUNCTION sigledger._graph_snapshot(text[], uuid[]) SECURITY DEFINER;
ALTER FUNCTION sigledger._graph_live_ids(text, uuid, integer) SECURITY DEFINER;

-- _graph_live_counts: how many aggregates a rebuild would refresh (the worker and admin roles read no table).
CREATE OR REPLACE FUNCTION sigledger._graph_live_counts(
    OUT entities bigint, OUT signals bigint, OUT opportunities bigint
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
    SELECT (SELECT count(*) FROM entities WHERE merged_into IS NULL),
           (SELECT count(*) FROM signals),
           (SELECT count(*) FROM opportunities WHERE merged_into IS NULL)
$$;
COMMENT ON FUNCTION sigledger._graph_live_counts() IS 'Internal: live aggregate counts for graph rebuild plans.';
