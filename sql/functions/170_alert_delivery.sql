-- 170: budget alerts as documents, and their delivery to sinks (issue 15; issue 11 item 5).
-- One shape everywhere: the document built here is what `budget watch` prints, what `--webhook` POSTs and
-- what the read API returns. Money and thresholds are fixed-point strings without the trailing zeros of the
-- column's scale (trim_scale: '0.6', '10', '0'; the Python library normalises amounts the same way,
-- sigledger.core.money), times ISO 8601 in UTC.
-- The NOTIFY on sigledger_budget_alert carries {"alert_id": id} only; any role can NOTIFY on that channel, so
-- a watcher reads the alert here by id and ignores ids that do not exist.

-- _alert_document: the document of one stored alert (json, not jsonb: the keys keep the order written here).
-- (By id, not by row: a parameter of the table's row type would tie the table to this function, and the
-- migrations' down files drop tables.)
CREATE OR REPLACE FUNCTION sigledger._alert_document(p_alert_id bigint)
RETURNS json
LANGUAGE sql
STABLE
SET search_path = sigledger, pg_temp
AS $$
    SELECT json_build_object(
               'alert_id', a.id,
               'budget_id', b.id,
               'level', b.level,
               'name', coalesce(ag.name, b.name),
               'agent', ag.name,
               'agent_id', b.agent_id,
               'period', b.period,
               'period_start', to_char(a.period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               'threshold', trim_scale(a.threshold)::text,
               'limit_usd', trim_scale(a.limit_usd)::text,
               'spent_usd', trim_scale(a.spent_usd)::text,
               'created_at', to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
      FROM sigledger.budget_alert a
      JOIN sigledger.budget b ON b.id = a.budget_id
      LEFT JOIN sigledger.agent_registry ag ON ag.id = b.agent_id
     WHERE a.id = p_alert_id;
$$;

CREATE OR REPLACE FUNCTION sigledger.budget_alert_document(p_alert_id bigint)
RETURNS json
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
    SELECT _alert_document(p_alert_id);
$$;
COMMENT ON FUNCTION sigledger.budget_alert_document(bigint) IS
'The alert with this id as a JSON document (alert_id, budget_id, level, name, agent, agent_id, period,
period_start, threshold, limit_usd, spent_usd, created_at; money as normalised strings), NULL when there is none (a
NOTIFY payload naming an unknown id is not an alert). Raises nothing.';

CREATE OR REPLACE FUNCTION sigledger.budget_alert_feed(p_after_id bigint DEFAULT 0, p_limit integer DEFAULT 1000)
RETURNS TABLE (alert_id bigint, document json)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    PERFORM _assert_limit(p_limit, 100000);
    RETURN QUERY
    SELECT a.id, _alert_document(a.id) FROM budget_alert a WHERE a.id > coalesce(p_after_id, 0) ORDER BY a.id
     LIMIT p_limit;
END;
$$;
COMMENT ON FUNCTION sigledger.budget_alert_feed(bigint, integer) IS
'Stored alerts with an id above after_id as documents (see budget_alert_document), oldest first, at most limit
(1..100000).
SQLSTATE: 22023';

-- budget_alert_last_id: the newest stored alert's id, 0 when none. `budget watch` reads it at start and prints
-- only alerts above it (a forged NOTIFY naming an older alert is not printed as new: issue 11.5).
CREATE OR REPLACE FUNCTION sigledger.budget_alert_last_id()
RETURNS bigint
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
    SELECT coalesce(max(a.id), 0) FROM budget_alert a;
$$;
COMMENT ON FUNCTION sigledger.budget_alert_last_id() IS
'The id of the newest stored alert (0 when none): a watcher''s starting point. Raises nothing.';

-- alert_sink_open: registers a sink (a webhook) or finds it again. A new sink starts from now (alerts stored
-- before it are not its business) unless p_replay; p_replay on an existing sink makes every stored alert it
-- has not delivered pending again.
CREATE OR REPLACE FUNCTION sigledger.alert_sink_open(p_sink text, p_replay boolean DEFAULT false)
RETURNS TABLE (sink text, start_after_id bigint, pending bigint, created boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    s alert_sink%ROWTYPE;
BEGIN
    -- the text rules (005_text.sql): trimmed, NFC, not blank, at most 500 characters and 2000 bytes
    p_sink := _text_arg(p_sink, 'sink', 500, 2000, 'name', '22023');
    -- concurrent openers of a new sink: the primary key orders them, the second finds the first's row
    INSERT INTO alert_sink (name, start_after_id)
    VALUES (p_sink, CASE WHEN coalesce(p_replay, false) THEN 0
                         ELSE coalesce((SELECT max(a.id) FROM budget_alert a), 0) END)
    ON CONFLICT ON CONSTRAINT alert_sink_pkey DO NOTHING
    RETURNING * INTO s;
    created := FOUND;
    IF NOT created THEN
        IF coalesce(p_replay, false) THEN
            UPDATE alert_sink x SET start_after_id = 0 WHERE x.name = p_sink RETURNING * INTO s;
        ELSE
            SELECT * INTO s FROM alert_sink x WHERE x.name = p_sink;
        END IF;
    END IF;
    sink := s.name;
    start_after_id := s.start_after_id;
    pending := (SELECT count(*) FROM budget_alert a
                 WHERE a.id > s.start_after_id
                   AND NOT EXISTS (SELECT FROM alert_delivery d WHERE d.sink = s.name AND d.alert_id = a.id));
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION sigledger.alert_sink_open(text, boolean) IS
'Registers the alert sink named sink (1..500 characters; budget watch --webhook uses the URL without its query)
or finds it again, and returns how many alerts are pending for it. A new sink starts with the alerts stored
after now; replay => true makes every stored alert it has not delivered pending.
SQLSTATE: 22023';

CREATE OR REPLACE FUNCTION sigledger.alert_sink_pending(p_sink text, p_limit integer DEFAULT 100)
RETURNS TABLE (alert_id bigint, document json)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_start bigint;
BEGIN
    PERFORM _assert_limit(p_limit, 10000);
    p_sink := _text_canon(p_sink);  -- sink names are stored canonical (alert_sink_open)
    SELECT s.start_after_id INTO v_start FROM alert_sink s WHERE s.name = p_sink;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown alert sink %L', left(p_sink, 200));
    END IF;
    -- by id, not by a high-water mark: an alert whose transaction commits after a later one is still pending
    RETURN QUERY
    SELECT a.id, _alert_document(a.id)
      FROM budget_alert a
     WHERE a.id > v_start
       AND NOT EXISTS (SELECT FROM alert_delivery d WHERE d.sink = p_sink AND d.alert_id = a.id)
     ORDER BY a.id
     LIMIT p_limit;
END;
$$;
COMMENT ON FUNCTION sigledger.alert_sink_pending(text, integer) IS
'Alerts the sink has not delivered yet, oldest first, as documents, at most limit (1..10000).
SQLSTATE: 22023, P0002';

CREATE OR REPLACE FUNCTION sigledger.alert_sink_delivered(p_sink text, p_alert_id bigint, p_attempts integer)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_attempts IS NULL OR p_attempts < 1 OR p_attempts > 1000000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('attempts must be between 1 and 1000000, got %s', coalesce(p_attempts::text, 'NULL'));
    END IF;
    p_sink := _text_canon(p_sink);  -- sink names are stored canonical (alert_sink_open)
    IF NOT EXISTS (SELECT FROM alert_sink s WHERE s.name = p_sink) THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown alert sink %L', left(p_sink, 200));
    END IF;
    IF NOT EXISTS (SELECT FROM budget_alert a WHERE a.id = p_alert_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('unknown alert %s', p_alert_id);
    END IF;
    -- two watchers of one sink that both delivered: the primary key keeps the first record
    INSERT INTO alert_delivery (sink, alert_id, attempts) VALUES (p_sink, p_alert_id, p_attempts)
    ON CONFLICT ON CONSTRAINT alert_delivery_pkey DO NOTHING;
    RETURN FOUND;
END;
$$;
COMMENT ON FUNCTION sigledger.alert_sink_delivered(text, bigint, integer) IS
'Records that the sink delivered the alert (the receiver acknowledged it) after attempts tries; true when
this call recorded it, false when it was recorded already.
SQLSTATE: 22023, P0002';

CREATE OR REPLACE FUNCTION sigledger.alert_sink_status()
RETURNS TABLE (sink text, start_after_id bigint, delivered bigint, pending bigint, last_delivered_at timestamptz)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
    SELECT s.name, s.start_after_id,
           (SELECT count(*) FROM alert_delivery d WHERE d.sink = s.name),
           (SELECT count(*) FROM budget_alert a
             WHERE a.id > s.start_after_id
               AND NOT EXISTS (SELECT FROM alert_delivery d WHERE d.sink = s.name AND d.alert_id = a.id)),
           (SELECT max(d.delivered_at) FROM alert_delivery d WHERE d.sink = s.name)
      FROM alert_sink s
     ORDER BY s.name;
$$;
COMMENT ON FUNCTION sigledger.alert_sink_status() IS
'Every alert sink: alerts delivered, alerts pending, the last delivery. Raises nothing.';
