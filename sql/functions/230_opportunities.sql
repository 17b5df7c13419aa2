-- 230 opportunities: create_opportunity, link_signals, merge_opportunities.
-- Field-merge rules are in docs/merge-rules.md; keep the two in step.

CREATE OR REPLACE FUNCTION sigledger.create_opportunity(
    p_title text, p_description text DEFAULT NULL, p_status text DEFAULT 'open', p_score numeric DEFAULT NULL,
    p_value_usd numeric DEFAULT NULL, p_attributes jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_id uuid;
    v_title text;
    v_description text;
BEGIN
    v_title := _text_arg(p_title, 'opportunity title', 500, 2000, 'name', '22023');
    v_description := _text_arg(p_description, 'opportunity description', 10000, 40000, 'text', NULL);
    -- 'merged' is reserved for tombstones written by merge_opportunities.
    IF p_status IS NULL OR p_status NOT IN ('open', 'won', 'lost') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('opportunity status must be open, won or lost, got %s', _text_quote(p_status));
    END IF;
    -- NaN compares greater than every number ("NaN >= 0" is true): name it explicitly.
    IF p_score = 'NaN' OR p_score < 0 OR p_score > 100 THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('opportunity score must be a number in [0, 100], got %s', p_score);
    END IF;
    -- value_usd is stored as numeric(14, 2): compared after the rounding the column applies, so that
    -- 999999999999.995 (which rounds to 1e12) is refused here, by name, not by the column's overflow.
    IF p_value_usd = 'NaN' OR p_value_usd < 0 OR round(p_value_usd, 2) >= 1e12 THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('opportunity value_usd must be a number in [0, 1e12) once rounded to cents, got %s',
                             _text_quote(p_value_usd::text));
    END IF;
    IF p_attributes IS NULL OR jsonb_typeof(p_attributes) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('opportunity attributes must be a JSON object, got %s', coalesce(jsonb_typeof(p_attributes), 'NULL'));
    END IF;

    INSERT INTO sigledger.opportunities (title, description, status, score, value_usd, attributes)
    VALUES (v_title, v_description, p_status, p_score, p_value_usd, p_attributes)
    RETURNING id INTO v_id;
    PERFORM sigledger._outbox_emit('opportunity', v_id, 'opportunity.created',
                                   jsonb_build_object('title', v_title, 'status', p_status));
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION sigledger.create_opportunity(text, text, text, numeric, numeric, jsonb) IS
'Create an opportunity (status open, won or lost; score in [0, 100]; value_usd in [0, 1e12) once rounded to cents). Returns its id. The title is trimmed and stored NFC (at most 500 characters and 2000 bytes); the description is free text (at most 10000 characters and 40000 bytes).
Errors: 22003 score or value_usd NaN, negative or too large.
SQLSTATE: 22023, 22003';

-- link_signals: link signals to the opportunity p_opportunity_id stands for now. If it was merged (before
-- the call, or by a merge we waited for), the links go to the merge target: a link is never lost to a merge.
CREATE OR REPLACE FUNCTION sigledger.link_signals(p_opportunity_id uuid, p_signal_ids uuid[])
RETURNS TABLE (opportunity_id uuid, linked integer, already_linked integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '10s'
AS $$
DECLARE
    v_head uuid;
    v_wanted uuid[];
    v_missing text;
    v_linked integer;
BEGIN
    IF p_opportunity_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'opportunity id is NULL';
    END IF;
    IF cardinality(p_signal_ids) > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('signal ids must hold at most 10000 ids, got %s', cardinality(p_signal_ids)),
            HINT = 'Link in several calls.';
    END IF;
    IF p_signal_ids IS NULL OR cardinality(p_signal_ids) = 0 OR array_position(p_signal_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('signal ids must be a non-empty list without NULL, got %s',
                             coalesce(_text_list(p_signal_ids::text[]), 'NULL'));
    END IF;
    SELECT array_agg(DISTINCT s ORDER BY s) INTO v_wanted FROM unnest(p_signal_ids) AS s;
    SELECT _text_list(array_agg(w::text ORDER BY w)) INTO v_missing FROM unnest(v_wanted) AS w
     WHERE NOT EXISTS (SELECT 1 FROM sigledger.signals s WHERE s.id = w);
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('signal not found: %s', v_missing);
    END IF;
    -- FOR KEY SHARE on the live opportunity: a merge of it (FOR UPDATE) waits for this transaction, or we
    -- waited for the merge and follow its tombstone.
    v_head := sigledger._lock_live_opportunity(p_opportunity_id);
    INSERT INTO sigledger.opportunity_signals (opportunity_id, signal_id)
    SELECT v_head, w FROM unnest(v_wanted) AS w
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_linked = ROW_COUNT;
    IF v_linked > 0 THEN
        PERFORM sigledger._outbox_emit('opportunity', v_head, 'opportunity.linked',
                                       jsonb_build_object('signal_ids', to_jsonb(v_wanted)));
    END IF;
    RETURN QUERY SELECT v_head, v_linked, cardinality(v_wanted) - v_linked;
END;
$$;
COMMENT ON FUNCTION sigledger.link_signals(uuid, uuid[]) IS
'Link signals (at most 10000 ids) to an opportunity (duplicates in the list or already linked are counted, not errors). If the opportunity was merged, the live merge target receives the links; opportunity_id in the result says which one did.
Errors: P0002 unknown opportunity or signal.
SQLSTATE: 22023, P0002, 55P03';

-- merge_opportunities: one transaction, all or nothing.
CREATE OR REPLACE FUNCTION sigledger.merge_opportunities(p_target uuid, p_sources uuid[])
RETURNS TABLE (target_id uuid, moved_links integer, duplicate_links integer, merge_id bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '10s'
AS $$
DECLARE
    v_ids uuid[] := p_sources || p_target;
    v_locked integer;
    v_missing text;
    v_dead record;
    v_before jsonb;
    v_after jsonb;
    v_source_links integer;
    v_moved integer;
    v_merge_id bigint;
BEGIN
    PERFORM sigledger._check_merge_input('opportunity', p_target, p_sources);
    -- Lock target and sources in id order (ORDER BY under FOR UPDATE locks rows as they come out of the sort):
    -- A->B racing B->A queue on the same first row instead of deadlocking; the second then finds a tombstone.
    SELECT count(*) INTO v_locked
      FROM (SELECT o.id FROM sigledger.opportunities o WHERE o.id = ANY (v_ids) ORDER BY o.id FOR UPDATE) AS l;
    IF v_locked <> cardinality(v_ids) THEN
        SELECT _text_list(array_agg(i::text ORDER BY i)) INTO v_missing FROM unnest(v_ids) AS i
         WHERE NOT EXISTS (SELECT 1 FROM sigledger.opportunities o WHERE o.id = i);
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('opportunity not found: %s', v_missing);
    END IF;
    -- Read after the lock: a merge that committed while we waited is visible to this statement.
    -- (IS TRUE: the rows by their primary key, never by a scan of the tombstones; see _signal_entities_no_tombstone)
    SELECT o.id, o.merged_into INTO v_dead FROM sigledger.opportunities o
     WHERE o.id = ANY (v_ids) AND (o.merged_into IS NOT NULL) IS TRUE ORDER BY o.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SLM01',
            MESSAGE = format('opportunity %s is a tombstone: it was merged into %s', v_dead.id, v_dead.merged_into),
            HINT = format('Merge into or from %s instead.', v_dead.merged_into);
    END IF;

    SELECT to_jsonb(o) INTO v_before FROM sigledger.opportunities o WHERE o.id = p_target;

    -- Links: copy to the target without duplicates, then drop them from the sources.
    INSERT INTO sigledger.opportunity_signals (opportunity_id, signal_id)
    SELECT DISTINCT p_target, os.signal_id FROM sigledger.opportunity_signals os WHERE os.opportunity_id = ANY (p_sources)
    ORDER BY 2
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    DELETE FROM sigledger.opportunity_signals WHERE opportunity_signals.opportunity_id = ANY (p_sources);
    GET DIAGNOSTICS v_source_links = ROW_COUNT;

    -- Field rules (docs/merge-rules.md): title and status stay the target's; description is the target's, or
    -- else the first non-blank one of the sources in id order; score and value_usd are the maxima; attribute
    -- keys: the target's win, then the sources' (the later id wins); created_at is the earliest.
    UPDATE sigledger.opportunities t
       SET description = coalesce(nullif(btrim(t.description), ''),
                                  (SELECT s.description FROM sigledger.opportunities s
                                    WHERE s.id = ANY (p_sources) AND nullif(btrim(s.description), '') IS NOT NULL
                                    ORDER BY s.id LIMIT 1)),
           score = (SELECT max(s.score) FROM sigledger.opportunities s WHERE s.id = ANY (v_ids)),
           value_usd = (SELECT max(s.value_usd) FROM sigledger.opportunities s WHERE s.id = ANY (v_ids)),
           attributes = (SELECT coalesce(jsonb_object_agg(kv.key, kv.value), '{}')
                           FROM (SELECT DISTINCT ON (a.key) a.key, a.value
                                   FROM sigledger.opportunities s, jsonb_each(s.attributes) AS a
                                  WHERE s.id = ANY (v_ids)
                                  ORDER BY a.key, (s.id = p_target) DESC, s.id DESC) AS kv),
           created_at = (SELECT min(s.created_at) FROM sigledger.opportunities s WHERE s.id = ANY (v_ids)),
           updated_at = now(),
           version = t.version + 1
     WHERE t.id = p_target
    RETURNING to_jsonb(t) INTO v_after;

    UPDATE sigledger.opportunities s
       SET status = 'merged', merged_into = p_target, merged_at = now(), updated_at = now(), version = s.version + 1
     WHERE s.id = ANY (p_sources);

    INSERT INTO sigledger.opportunity_merges (target_id, source_ids, moved_links, duplicate_links, target_before, target_after)
    VALUES (p_target, p_sources, v_moved, v_source_links - v_moved, v_before, v_after)
    RETURNING id INTO v_merge_id;
    PERFORM sigledger._outbox_emit('opportunity', s, 'opportunity.merged',
                                   jsonb_build_object('merged_into', p_target, 'merge_id', v_merge_id))
       FROM unnest(p_sources) AS s;
    PERFORM sigledger._outbox_emit('opportunity', p_target, 'opportunity.merge_target',
                                   jsonb_build_object('sources', to_jsonb(p_sources), 'merge_id', v_merge_id));
    RETURN QUERY SELECT p_target, v_moved, v_source_links - v_moved, v_merge_id;
END;
$$;
COMMENT ON FUNCTION sigledger.merge_opportunities(uuid, uuid[]) IS
'Merge opportunities p_sources into p_target in one transaction: rows locked in id order; signal links move to the target without duplicates; fields merge by the rules of docs/merge-rules.md; each source becomes a tombstone (merged_into = target); a row lands in opportunity_merges (when, by whom, which application, target before/after); outbox rows are written. Bad input changes nothing.
Errors: SLM02 NULL target, empty list, NULL or duplicate source, target among sources; 22023 more than 1000 sources; P0002 unknown id; SLM01 an id is already merged (the message names the tombstone and its target).
SQLSTATE: SLM02, 22023, P0002, SLM01, 55P03';
