-- 165: the quarantine, for admins (issue 15): what record_costs refused and why, and the path back into the
-- ledger for a row once it is fixed.

CREATE OR REPLACE FUNCTION sigledger.quarantine_list(p_include_resolved boolean DEFAULT false,
                                                     p_limit integer DEFAULT 100)
RETURNS TABLE (quarantine_id bigint, received_at timestamptz, idempotency_key text, sqlstate text, reason text,
               payload jsonb, resolved_at timestamptz, resolved_by text, resolved_ledger_id bigint)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    PERFORM _assert_limit(p_limit, 100000);
    RETURN QUERY
    SELECT q.id, q.received_at, q.idempotency_key, q.sqlstate, q.reason, q.payload, q.resolved_at, q.resolved_by,
           q.resolved_ledger_id
      FROM cost_quarantine q
     WHERE coalesce(p_include_resolved, false) OR q.resolved_at IS NULL
     ORDER BY q.id
     LIMIT p_limit;
END;
$$;
COMMENT ON FUNCTION sigledger.quarantine_list(boolean, integer) IS
'Rows record_costs quarantined, oldest first, at most limit (1..100000): SQLSTATE and reason of the refusal,
the payload as received, and (include_resolved => true) how each resolved one was re-submitted.
SQLSTATE: 22023';

-- quarantine_resubmit: records a quarantined row, fixed by p_changes, through record_cost (so it passes every
-- rule a new cost passes, and charges the agent's budgets), and marks it resolved. Bad input raises the
-- SQLSTATE record_cost raises (or 22P02 for a value of the wrong type) and changes nothing.
-- Two admins re-submitting the same row: the row lock orders them; the second sees it resolved and gets the
-- same ledger id back (replayed). The same key re-submitted from two rows, or already in the ledger: the
-- ledger's key registry keeps one row (record_cost is idempotent), inserted says which call wrote it.
CREATE OR REPLACE FUNCTION sigledger.quarantine_resubmit(p_quarantine_id bigint, p_changes jsonb DEFAULT '{}'::jsonb)
RETURNS TABLE (quarantine_id bigint, ledger_id bigint, inserted boolean, replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    q cost_quarantine%ROWTYPE;
    v jsonb;
    v_key text;
    v_existed boolean;
    v_ledger_id bigint;
BEGIN
    IF p_quarantine_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'quarantine_id must not be NULL';
    END IF;
    IF p_changes IS NULL OR jsonb_typeof(p_changes) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('changes must be a JSON object, got %s', coalesce(jsonb_typeof(p_changes), 'NULL'));
    END IF;
    SELECT * INTO q FROM cost_quarantine c WHERE c.id = p_quarantine_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown quarantine row %s', p_quarantine_id);
    END IF;
    IF q.resolved_at IS NOT NULL THEN
        quarantine_id := q.id; ledger_id := q.resolved_ledger_id; inserted := false; replayed := true;
        RETURN NEXT;
        RETURN;
    END IF;
    -- a payload that was not even an object (a bad batch element) is replaced by the changes as a whole
    v := CASE WHEN jsonb_typeof(q.payload) = 'object' THEN q.payload || p_changes ELSE p_changes END;
    v_key := v ->> 'idempotency_key';
    v_existed := EXISTS (SELECT FROM llm_cost_log_key k WHERE k.idempotency_key = v_key);
    v_ledger_id := record_cost(
        p_idempotency_key => v_key,
        p_agent_id => (v ->> 'agent_id')::uuid,
        p_model => v ->> 'model',
        p_provider => v ->> 'provider',
        p_input_tokens => coalesce((v ->> 'input_tokens')::bigint, 0),
        p_output_tokens => coalesce((v ->> 'output_tokens')::bigint, 0),
        p_cost_usd => (v ->> 'cost_usd')::numeric,
        p_created_at => (v ->> 'created_at')::timestamptz,
        p_metadata => coalesce(v -> 'metadata', '{}'::jsonb));
    UPDATE cost_quarantine c
       SET resolved_at = now(), resolved_by = session_user, resolved_payload = v, resolved_ledger_id = v_ledger_id
     WHERE c.id = q.id;
    -- (a concurrent writer of the same new key between the check and record_cost would make this true for a
    -- row that call did not write; the money is charged once either way)
    quarantine_id := q.id; ledger_id := v_ledger_id; inserted := NOT v_existed; replayed := false;
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION sigledger.quarantine_resubmit(bigint, jsonb) IS
'Re-submits quarantined row quarantine_id with changes (a JSON object merged over its payload; "created_at":
null means now) through record_cost, and marks it resolved. Returns (quarantine_id, ledger_id, inserted: this
call wrote the ledger row, replayed: the row was already resolved). Bad input: the SQLSTATE record_cost raises,
nothing changed.
SQLSTATE: 22004, 22023, 22003, 22P02, 22007, 22008, P0002, 55P03';
