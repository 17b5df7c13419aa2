-- 200 internals shared by the signal, entity and opportunity API. Nothing here is granted to the app.

-- _try_timestamptz: parse text as timestamptz; on failure NULL, and p_error gets 'SQLSTATE message' (an
-- unknown time zone is 22023, an hour 99 is 22008, ...), so that a batch can reject one item with its reason
-- instead of failing as a whole. Only the cast runs in the exception block; any data exception (class 22) is
-- the item's fault, anything else (a cancel, out of memory) still fails the call.
DROP FUNCTION IF EXISTS sigledger._try_timestamptz(text);
CREATE OR REPLACE FUNCTION sigledger._try_timestamptz(p_value text, OUT value timestamptz, OUT error text)
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_state text;
    v_msg text;
BEGIN
    value := p_value::timestamptz;
EXCEPTION WHEN data_exception THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
    error := v_state || ' ' || v_msg;
END;
$$;

-- _check_merge_input: the input rules shared by merge_entities and merge_opportunities (SQLSTATE SLM02).
-- Pure validation, no reads: a rejected call has taken no lock and changed nothing.
CREATE OR REPLACE FUNCTION sigledger._check_merge_input(p_kind text, p_target uuid, p_sources uuid[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_dup uuid;
BEGIN
    IF p_target IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SLM02', MESSAGE = format('%s merge: target is NULL', p_kind);
    END IF;
    IF p_sources IS NULL OR cardinality(p_sources) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'SLM02',
            MESSAGE = format('%s merge into %s: the list of sources is empty', p_kind, p_target),
            HINT = 'Pass at least one source id.';
    END IF;
    -- a bound, so that one call cannot lock and rewrite without limit (49,999 sources took 4.3 s)
    IF cardinality(p_sources) > 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s merge into %s: sources must hold at most 1000 ids, got %s', p_kind, p_target,
                             cardinality(p_sources)),
            HINT = 'Merge in several calls.';
    END IF;
    IF array_position(p_sources, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SLM02',
            MESSAGE = format('%s merge into %s: source %s is NULL', p_kind, p_target, array_position(p_sources, NULL));
    END IF;
    IF p_target = ANY (p_sources) THEN
        RAISE EXCEPTION USING ERRCODE = 'SLM02',
            MESSAGE = format('%s merge: target %s is also among the sources', p_kind, p_target),
            HINT = 'An id cannot be merged into itself.';
    END IF;
    SELECT s INTO v_dup FROM unnest(p_sources) AS s GROUP BY s HAVING count(*) > 1 ORDER BY s LIMIT 1;
    IF v_dup IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SLM02',
            MESSAGE = format('%s merge into %s: source %s is listed more than once', p_kind, p_target, v_dup);
    END IF;
END;
$$;

-- _lock_live_entities: for each id, the live entity it stands for now (following merged_into), with a
-- FOR KEY SHARE lock on every live entity returned, taken in id order in one statement.
-- Why: merge_entities takes FOR UPDATE on the same rows (in id order), so a link written under these locks
-- can never land on an entity that a concurrent merge is turning into a tombstone. When a locked row turns
-- out to be a tombstone (its merge committed while we waited), the locks are given back by rolling back the
-- block (a savepoint), and the heads are locked instead: we never hold a tombstone's lock while waiting for
-- another row, which is what would let a concurrent merge deadlock with us.
CREATE OR REPLACE FUNCTION sigledger._lock_live_entities(p_ids uuid[])
RETURNS TABLE (id uuid, head uuid)
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_orig uuid[];
    v_head uuid[];
    v_tombstones integer;
    v_found integer;
    v_wanted integer;
BEGIN
    SELECT coalesce(array_agg(DISTINCT u), '{}') INTO v_orig FROM unnest(p_ids) AS u WHERE u IS NOT NULL;
    v_head := v_orig;
    FOR v_round IN 1 .. 20 LOOP
        BEGIN
            SELECT count(*), count(*) FILTER (WHERE l.merged_into IS NOT NULL)
              INTO v_found, v_tombstones
              FROM (SELECT e.id, e.merged_into FROM sigledger.entities e
                    WHERE e.id = ANY (v_head) ORDER BY e.id FOR KEY SHARE) AS l;
            SELECT count(DISTINCT h) INTO v_wanted FROM unnest(v_head) AS h;
            IF v_found <> v_wanted THEN
                RAISE EXCEPTION USING ERRCODE = 'P0002',
                    MESSAGE = format('entity not found: %s', (SELECT sigledger._text_list(array_agg(h::text ORDER BY h))
                                       FROM unnest(v_head) AS h
                                       WHERE NOT EXISTS (SELECT 1 FROM sigledger.entities e WHERE e.id = h)));
            END IF;
            IF v_tombstones = 0 THEN
                RETURN QUERY SELECT o, hd FROM unnest(v_orig, v_head) AS t (o, hd);
                RETURN;
            END IF;
            -- A tombstone: release every lock of this round and retry with the heads.
            RAISE EXCEPTION USING ERRCODE = 'SLMXR', MESSAGE = 'internal: retry entity locking with heads';
        EXCEPTION WHEN SQLSTATE 'SLMXR' THEN
            SELECT array_agg(c.cur ORDER BY o.ord) INTO v_head
              FROM unnest(v_orig) WITH ORDINALITY AS o (id, ord)
              CROSS JOIN LATERAL (
                  WITH RECURSIVE chain (cur, depth) AS (
                      SELECT o.id, 0
                      UNION ALL
                      SELECT e.merged_into, chain.depth + 1 FROM chain JOIN sigledger.entities e ON e.id = chain.cur
                      -- (IS TRUE: by the primary key, not a scan of the tombstones: tests/core/test_index_plans.py)
                      WHERE (e.merged_into IS NOT NULL) IS TRUE AND chain.depth < 1000)
                  SELECT chain.cur FROM chain ORDER BY chain.depth DESC LIMIT 1) AS c;
        END;
    END LOOP;
    RAISE EXCEPTION USING ERRCODE = '40001',
        MESSAGE = 'could not lock the live entities: they kept being merged while we waited',
        HINT = 'Retry the transaction.';
END;
$$;

-- _lock_live_opportunity: the same idea for one opportunity (link_signals): returns the live opportunity that
-- p_id stands for now, locked FOR KEY SHARE, so that a concurrent merge (FOR UPDATE) waits for us or we for it.
CREATE OR REPLACE FUNCTION sigledger._lock_live_opportunity(p_id uuid)
RETURNS uuid
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_id uuid := p_id;
    v_into uuid;
BEGIN
    FOR v_round IN 1 .. 100 LOOP
        BEGIN
            SELECT o.merged_into INTO v_into FROM sigledger.opportunities o WHERE o.id = v_id FOR KEY SHARE;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('opportunity not found: %s', v_id);
            END IF;
            IF v_into IS NULL THEN
                RETURN v_id;
            END IF;
            -- Merged while (or before) we waited: give its lock back and follow the tombstone.
            RAISE EXCEPTION USING ERRCODE = 'SLMXR', MESSAGE = 'internal: follow opportunity tombstone';
        EXCEPTION WHEN SQLSTATE 'SLMXR' THEN
            v_id := v_into;
        END;
    END LOOP;
    RAISE EXCEPTION USING ERRCODE = '40001',
        MESSAGE = format('could not lock the live opportunity for %s: it kept being merged', p_id),
        HINT = 'Retry the transaction.';
END;
$$;

-- Backstops: whatever the writer (API or owner by hand), no link or alias may point at a tombstone.
-- Statement-level, on the transition table. Race-proof because the foreign-key check of each new row (a
-- row-level trigger that fires before this one) holds FOR KEY SHARE on the referenced row: a merge that
-- committed earlier is visible to this check's fresh snapshot, and a later merge waits for our commit.
CREATE OR REPLACE FUNCTION sigledger._signal_entities_no_tombstone()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
-- @plpgsql_check_options: newtable = new_rows
DECLARE
    v_id uuid;
    v_into uuid;
BEGIN
    SELECT e.id, e.merged_into INTO v_id, v_into
      FROM new_rows n JOIN sigledger.entities e ON e.id = n.entity_id
     -- (IS TRUE: the rows by their primary key; a plain merged_into IS NOT NULL matches the predicate of
     -- entities_merged_into_idx, and with statistics taken before any merge the planner scanned every
     -- tombstone, per statement: tests/core/test_index_plans.py)
     WHERE (e.merged_into IS NOT NULL) IS TRUE LIMIT 1;
    IF v_id IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SLM01',
            MESSAGE = format('entity %s was merged into %s: it cannot take new links', v_id, v_into),
            HINT = format('Use entity %s.', v_into);
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION sigledger._entity_aliases_no_tombstone()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
-- @plpgsql_check_options: newtable = new_rows
DECLARE
    v_id uuid;
    v_into uuid;
BEGIN
    SELECT e.id, e.merged_into INTO v_id, v_into
      FROM new_rows n JOIN sigledger.entities e ON e.id = n.canonical_entity_id
     -- (IS TRUE: the rows by their primary key, never by a scan of the tombstones; see _signal_entities_no_tombstone)
     WHERE (e.merged_into IS NOT NULL) IS TRUE LIMIT 1;
    IF v_id IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SLM01',
            MESSAGE = format('entity %s was merged into %s: it cannot take new aliases', v_id, v_into),
            HINT = format('Use entity %s.', v_into);
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION sigledger._opportunity_signals_no_tombstone()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
-- @plpgsql_check_options: newtable = new_rows
DECLARE
    v_id uuid;
    v_into uuid;
BEGIN
    SELECT o.id, o.merged_into INTO v_id, v_into
      FROM new_rows n JOIN sigledger.opportunities o ON o.id = n.opportunity_id
     -- (IS TRUE: the rows by their primary key, never by a scan of the tombstones; see _signal_entities_no_tombstone)
     WHERE (o.merged_into IS NOT NULL) IS TRUE LIMIT 1;
    IF v_id IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SLM01',
            MESSAGE = format('opportunity %s was merged into %s: it cannot take new signal links', v_id, v_into),
            HINT = format('Use opportunity %s.', v_into);
    END IF;
    RETURN NULL;
END;
$$;

-- Transition tables allow one event per trigger, hence an INSERT and an UPDATE trigger per table.
CREATE OR REPLACE TRIGGER signal_entities_no_tombstone_ins AFTER INSERT ON sigledger.signal_entities
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sigledger._signal_entities_no_tombstone();
CREATE OR REPLACE TRIGGER signal_entities_no_tombstone_upd AFTER UPDATE ON sigledger.signal_entities
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sigledger._signal_entities_no_tombstone();
CREATE OR REPLACE TRIGGER entity_aliases_no_tombstone_ins AFTER INSERT ON sigledger.entity_aliases
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sigledger._entity_aliases_no_tombstone();
CREATE OR REPLACE TRIGGER entity_aliases_no_tombstone_upd AFTER UPDATE ON sigledger.entity_aliases
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sigledger._entity_aliases_no_tombstone();
CREATE OR REPLACE TRIGGER opportunity_signals_no_tombstone_ins AFTER INSERT ON sigledger.opportunity_signals
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sigledger._opportunity_signals_no_tombstone();
CREATE OR REPLACE TRIGGER opportunity_signals_no_tombstone_upd AFTER UPDATE ON sigledger.opportunity_signals
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sigledger._opportunity_signals_no_tombstone();
