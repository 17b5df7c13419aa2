-- pgTAP: the rule of record_costs (issue 13's review): a batch behaves exactly as if its rows were passed to
-- record_cost one after another, in order. Every case below runs twice from the same state, each time in a
-- subtransaction that is rolled back: once as one record_costs call, once as one record_cost call per row (an
-- absent field takes record_cost's DEFAULT, a JSON null is passed as SQL NULL). The two must agree on the counts
-- (a call that added a ledger row is "inserted", one that did not a duplicate, one that raised a quarantined
-- row), on the SQLSTATE and message of every refusal in order (the quarantine's reasons against record_cost's
-- errors; a row refused again with the same key and payload is counted but not quarantined again, V8_103), on
-- the ledger rows written and on the budgets' spend. Each case has keys of its own; "stored" rows
-- are recorded once beforehand, so a message naming a stored row's ledger id names the same id in both runs (an
-- id written by the run itself is shown as "new": the sequence is not rolled back).
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(28);

SELECT sigledger.create_agent('sq-a', 1000) AS a \gset
SELECT sigledger.create_agent('sq-b', 1000) AS b \gset
SELECT sigledger.add_model_price('sq-p', 'sq-m', 1, 2, now() - interval '1 day');  -- 1000 + 500 tokens: 0.002 USD

-- one batch row: the usual fields, the cost when given (SQL NULL: the field absent), then the case's changes
CREATE FUNCTION pg_temp.r(p_key text, p_agent uuid, p_cost numeric, p_more jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object('idempotency_key', p_key, 'agent_id', p_agent, 'model', 'sq-m',
                                                'provider', 'sq-p', 'input_tokens', 1000, 'output_tokens', 500,
                                                'cost_usd', p_cost)) || p_more
$$;

-- what a run did since the marks: ledger ids above p_ledger are the run's own ("new" in messages)
CREATE FUNCTION pg_temp.seen(p_counts jsonb, p_errors jsonb, p_ledger bigint) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object(
        'counts', p_counts,
        'errors', (SELECT coalesce(jsonb_agg(jsonb_build_array(e ->> 0,
                                     CASE WHEN (regexp_match(e ->> 1, '\(ledger (\d+)\)'))[1]::bigint > p_ledger
                                          THEN regexp_replace(e ->> 1, '\(ledger \d+\)', '(ledger new)')
                                          ELSE e ->> 1 END) ORDER BY i), '[]')
                     FROM jsonb_array_elements(p_errors) WITH ORDINALITY AS x(e, i)),
        'ledger', (SELECT coalesce(jsonb_agg(jsonb_build_array(l.idempotency_key, l.agent_id, l.cost_usd, l.priced_usd,
                                                               l.cost_source, l.tokens_input, l.tokens_output, l.model,
                                                               l.provider, l.metadata, l.created_at, l.reservation_id)
                                             ORDER BY l.idempotency_key, l.id), '[]')
                     FROM sigledger.llm_cost_log l WHERE l.id > p_ledger),
        'spend', (SELECT jsonb_agg(jsonb_build_array(s.budget_id, s.spent_usd, s.reserved_usd, s.excess_usd)
                                   ORDER BY s.budget_id, s.period_start, s.slice)
                    FROM sigledger.budget_spend s),
        'reservations', (SELECT jsonb_agg(jsonb_build_array(br.id, br.state, br.actual_usd) ORDER BY br.id)
                           FROM sigledger.budget_reservation br))
$$;

-- the batch as one record_costs call (rolled back; a call that raises is its outcome)
CREATE FUNCTION pg_temp.as_batch(p_batch jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_ledger bigint := (SELECT coalesce(max(id), 0) FROM sigledger.llm_cost_log);
    v_quarantine bigint := (SELECT coalesce(max(id), 0) FROM sigledger.cost_quarantine);
    v jsonb;
    v_state text;
    v_msg text;
BEGIN
    BEGIN
        SELECT to_jsonb(c) INTO v FROM sigledger.record_costs(p_batch) c;
        v := pg_temp.seen(v, (SELECT coalesce(jsonb_agg(jsonb_build_array(q.sqlstate, q.reason) ORDER BY q.id), '[]')
                                FROM sigledger.cost_quarantine q WHERE q.id > v_quarantine),
                          v_ledger);
        RAISE EXCEPTION USING ERRCODE = 'SLZ98', MESSAGE = 'roll the run back';
    EXCEPTION WHEN SQLSTATE 'SLZ98' THEN
        NULL;
    WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
        v := jsonb_build_object('raised', jsonb_build_array(v_state, v_msg));
    END;
    RETURN v;
END;
$$;

-- the batch as one record_cost call per row, in order (rolled back)
CREATE FUNCTION pg_temp.as_calls(p_batch jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_ledger bigint := (SELECT coalesce(max(id), 0) FROM sigledger.llm_cost_log);
    v_before bigint;
    v_inserted integer := 0;
    v_duplicates integer := 0;
    v_errors jsonb := '[]';
    v_quarantined integer := 0;
    v_seen text[] := '{}';
    v jsonb;
    e jsonb;
    v_state text;
    v_msg text;
BEGIN
    BEGIN
        FOR e IN SELECT x FROM jsonb_array_elements(p_batch) x LOOP
            v_before := (SELECT count(*) FROM sigledger.llm_cost_log);
            BEGIN
                PERFORM sigledger.record_cost(
                    e ->> 'idempotency_key', (e ->> 'agent_id')::uuid, e ->> 'model', e ->> 'provider',
                    CASE WHEN e ? 'input_tokens' THEN (e ->> 'input_tokens')::bigint ELSE 0 END,
                    CASE WHEN e ? 'output_tokens' THEN (e ->> 'output_tokens')::bigint ELSE 0 END,
                    (e ->> 'cost_usd')::numeric, (e ->> 'created_at')::timestamptz,
                    CASE WHEN NOT e ? 'metadata' THEN '{}'::jsonb WHEN e -> 'metadata' = 'null' THEN NULL
                         ELSE e -> 'metadata' END);
                IF (SELECT count(*) FROM sigledger.llm_cost_log) > v_before THEN
                    v_inserted := v_inserted + 1;
                ELSE
                    v_duplicates := v_duplicates + 1;
                END IF;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
                v_quarantined := v_quarantined + 1;
                -- the quarantine holds a refused row once: the same key and payload again adds no row (V8_103)
                IF e ->> 'idempotency_key' IS NULL THEN
                    v_errors := v_errors || jsonb_build_array(jsonb_build_array(v_state, v_msg));
                ELSIF NOT sigledger._quarantine_replay_key(e ->> 'idempotency_key', e) = ANY (v_seen) THEN
                    v_errors := v_errors || jsonb_build_array(jsonb_build_array(v_state, v_msg));
                    v_seen := v_seen || sigledger._quarantine_replay_key(e ->> 'idempotency_key', e);
                END IF;
            END;
        END LOOP;
        v := pg_temp.seen(jsonb_build_object('inserted', v_inserted, 'duplicates', v_duplicates,
                                             'quarantined', v_quarantined), v_errors, v_ledger);
        RAISE EXCEPTION USING ERRCODE = 'SLZ98', MESSAGE = 'roll the run back';
    EXCEPTION WHEN SQLSTATE 'SLZ98' THEN
        NULL;
    END;
    RETURN v;
END;
$$;

-- stored rows (the ledger already holds them when the cases run)
SELECT sigledger.record_cost('sq-s2', :'a', 'sq-m', 'sq-p', 1000, 500, 1.00);
SELECT sigledger.record_cost('sq-s4', :'a', 'sq-m', 'sq-p', 1000, 500, 1.00);
SELECT sigledger.record_cost('sq-s7', :'a', 'sq-m', 'sq-p', 1000, 500, 0.5);
SELECT sigledger.record_cost('sq-s8', :'a', 'sq-m', 'sq-p', 1000, 500, 1.00);
SELECT sigledger.record_cost('sq-s9', :'a', 'sq-m', 'sq-p', 1000, 500, NULL);
-- reservations of agent a; the key of the last one holds a row written before the key space was reserved
-- (here by the owner), by agent a at 0.25 USD, and the one before it a row of agent b
SELECT reservation_id AS r1 FROM sigledger.reserve_budget(:'a', 3) \gset
SELECT nextval(pg_get_serial_sequence('sigledger.budget_reservation', 'id')) + 1 AS r2 \gset
INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)
VALUES ('reservation:' || :r2, :'b', 'm', 'p', 0.1);
SELECT is((SELECT reservation_id FROM sigledger.reserve_budget(:'a', 2)), :r2::bigint, 'reservation r2');
INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)
VALUES ('reservation:' || :r2 || ':settlement', :'b', 'm', 'p', 0.1);
SELECT nextval(pg_get_serial_sequence('sigledger.budget_reservation', 'id')) + 1 AS r3 \gset
INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)
VALUES ('reservation:' || :r3, :'a', 'm', 'p', 0.25);
SELECT is((SELECT reservation_id FROM sigledger.reserve_budget(:'a', 2)), :r3::bigint, 'reservation r3');

CREATE TEMP TABLE cases (ord serial, name text, batch jsonb) ON COMMIT DROP;
INSERT INTO cases (name, batch) VALUES
    -- duplicates of a key within the batch
    ('equal duplicates, nothing stored',
     jsonb_build_array(pg_temp.r('sq-1', :'a', 2.00), pg_temp.r('sq-1', :'a', 2.00))),
    ('equal duplicates of a key stored at another cost: the same conflict, counted twice, quarantined once',
     jsonb_build_array(pg_temp.r('sq-s2', :'a', 2.00), pg_temp.r('sq-s2', :'a', 2.00))),
    ('different costs, nothing stored',
     jsonb_build_array(pg_temp.r('sq-3', :'a', 1), pg_temp.r('sq-3', :'a', 2), pg_temp.r('sq-3', :'a', 1))),
    ('the stored cost, then another one',
     jsonb_build_array(pg_temp.r('sq-s4', :'a', 1), pg_temp.r('sq-s4', :'a', 2))),
    ('a cost, then the cost omitted (a replay)',
     jsonb_build_array(pg_temp.r('sq-5', :'a', 0.5), pg_temp.r('sq-5', :'a', NULL))),
    ('the cost omitted, then given: the priced one, then another',
     jsonb_build_array(pg_temp.r('sq-6', :'a', NULL), pg_temp.r('sq-6', :'a', 0.002), pg_temp.r('sq-6', :'a', 0.5))),
    ('the cost omitted twice, stored at 0.5',
     jsonb_build_array(pg_temp.r('sq-s7', :'a', NULL), pg_temp.r('sq-s7', :'a', NULL))),
    ('another agent, the cost omitted, stored',
     jsonb_build_array(pg_temp.r('sq-s8', :'b', NULL), pg_temp.r('sq-s8', :'a', NULL))),
    ('another agent, nothing stored',
     jsonb_build_array(pg_temp.r('sq-10', :'a', 1), pg_temp.r('sq-10', :'b', 1), pg_temp.r('sq-10', :'b', NULL))),
    ('the priced cost given, stored priced',
     jsonb_build_array(pg_temp.r('sq-s9', :'a', 0.002), pg_temp.r('sq-s9', :'a', 0.003))),
    ('an invalid first row, then a valid one',
     jsonb_build_array(pg_temp.r('sq-11', :'a', -1), pg_temp.r('sq-11', :'a', 1), pg_temp.r('sq-11', :'a', 1))),
    ('other fields differ, the same cost (a replay)',
     jsonb_build_array(pg_temp.r('sq-12', :'a', 1, '{"metadata": {"x": 1}, "input_tokens": 7}'),
                       pg_temp.r('sq-12', :'a', 1, '{"metadata": {"x": 2}, "model": "other"}'))),
    -- JSON null against record_cost's NULL arguments, and absent fields against its defaults
    ('JSON null metadata', jsonb_build_array(pg_temp.r('sq-20', :'a', 1, '{"metadata": null}'))),
    ('JSON null tokens',
     jsonb_build_array(pg_temp.r('sq-21', :'a', 1, '{"input_tokens": null}'),
                       pg_temp.r('sq-22', :'a', 1, '{"output_tokens": null}'),
                       pg_temp.r('sq-23', :'a', NULL, '{"input_tokens": null}'))),
    ('tokens absent', jsonb_build_array(pg_temp.r('sq-24', :'a', 1) - 'input_tokens' - 'output_tokens')),
    ('JSON null cost and created_at',
     jsonb_build_array(pg_temp.r('sq-25', :'a', NULL, '{"cost_usd": null, "created_at": null}'))),
    ('JSON null key, agent, model, provider',
     jsonb_build_array(pg_temp.r('sq-26', :'a', 1, '{"idempotency_key": null}'),
                       pg_temp.r('sq-27', :'a', 1, '{"agent_id": null}'),
                       pg_temp.r('sq-28', :'a', 1, '{"model": null}'),
                       pg_temp.r('sq-29', :'a', 1, '{"provider": null}'))),
    ('a value that does not cast (the row by row casts), then duplicates',
     jsonb_build_array(pg_temp.r('sq-32', :'a', 1, '{"agent_id": "not-a-uuid"}'), pg_temp.r('sq-32', :'a', 1),
                       pg_temp.r('sq-32', :'a', 2, '{"metadata": null}'), pg_temp.r('sq-33', :'a', 1, '{"output_tokens": null}'))),
    ('metadata not an object', jsonb_build_array(pg_temp.r('sq-30', :'a', 1, '{"metadata": [1]}'))),
    ('a JSON null metadata duplicate', jsonb_build_array(pg_temp.r('sq-31', :'a', 1),
                                                         pg_temp.r('sq-31', :'a', 1, '{"metadata": null}'))),
    -- keys of reservations
    ('a reservation recorded twice, equal',
     jsonb_build_array(pg_temp.r('reservation:' || :r1, :'a', 2), pg_temp.r('reservation:' || :r1, :'a', 2),
                       pg_temp.r('reservation:' || :r1, :'a', NULL))),
    ('a reservation recorded twice, different',
     jsonb_build_array(pg_temp.r('reservation:' || :r1, :'a', 2), pg_temp.r('reservation:' || :r1, :'a', 2.5))),
    ('a reservation of another agent', jsonb_build_array(pg_temp.r('reservation:' || :r1, :'b', 2))),
    ('a reservation whose keys hold rows of another agent, written before the key space was reserved',
     jsonb_build_array(pg_temp.r('reservation:' || :r2, :'a', 1), pg_temp.r('sq-40', :'a', 1))),
    ('a reservation whose key holds an older row of its agent at another cost',
     jsonb_build_array(pg_temp.r('reservation:' || :r3, :'a', 0.3), pg_temp.r('sq-41', :'a', 1))),
    ('a reservation whose key holds an older row of its agent at the same cost',
     jsonb_build_array(pg_temp.r('reservation:' || :r3, :'a', 0.25), pg_temp.r('reservation:' || :r3, :'a', 0.3)));

SELECT is(pg_temp.as_batch(c.batch), pg_temp.as_calls(c.batch), c.name) FROM cases c ORDER BY c.ord;

SELECT * FROM finish();
ROLLBACK;
