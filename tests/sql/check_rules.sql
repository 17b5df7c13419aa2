-- pgTAP: V8_100's one-CHECK rules (llm_cost_log_rules, budget_spend_rules, budget_reservation_rules) keep every
-- former CHECK constraint and its error contract. (1) A direct write by the owner that breaks each former rule
-- is refused with 23514, the former constraint's name as the error's constraint name, the table, and the
-- message PostgreSQL gave. (2) On random rows drawn from every rule's edge values (NULLs included), the
-- functions name the same rule as the former constraints, copied below verbatim from pg_get_constraintdef
-- before V8_100 onto temporary tables (a row breaking several rules: the first by name, as PostgreSQL checks).
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(36);

-- the outcome of a statement: 'ok', or '<sqlstate> <constraint> <table>: <message>'
CREATE FUNCTION pg_temp.outcome(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_con text;
    v_tab text;
    v_msg text;
BEGIN
    EXECUTE p_sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_con = CONSTRAINT_NAME, v_tab = TABLE_NAME,
                            v_msg = MESSAGE_TEXT;
    RETURN format('%s %s %s: %s', v_state, v_con, v_tab, v_msg);
END;
$$;
CREATE FUNCTION pg_temp.refused(p_table text, p_rule text) RETURNS text LANGUAGE sql AS $$
    SELECT format('23514 %s %s: new row for relation "%s" violates check constraint "%s"', p_rule, p_table, p_table,
                  p_rule)
$$;

SELECT sigledger.create_agent('tap-rules', 10) AS a \gset
SELECT id AS b FROM sigledger.budget WHERE agent_id = :'a' \gset

-- (1) llm_cost_log: one bad value per former constraint (key, model, provider, cost, priced, tokens in / out,
-- metadata, cost_source, created_at, charged_at); the table named is the partition the row went to, as before
SELECT matches(pg_temp.outcome(format($$INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider,
                                            cost_usd, priced_usd, tokens_input, tokens_output, metadata, cost_source,
                                            created_at, charged_at)
                                        VALUES (%s, %L, %s)$$, x.k, :'a', x.vals)),
               format('^23514 %s (llm_cost_log_[a-z0-9]+): new row for relation "\1" violates check constraint "%s"$',
                      x.rule, x.rule),
               x.rule || ' refuses (' || x.k || ', ' || x.vals || ')')
  FROM (VALUES ('llm_cost_log_charged_at_range', $$'r-1'$$, $$'m', 'p', 1, NULL, 1, 1, '{}', 'client', now(), '2019-06-01 00:00:00+00'$$),
               ('llm_cost_log_cost_source_valid', $$'r-2'$$, $$'m', 'p', 1, NULL, 1, 1, '{}', 'guess', now(), now()$$),
               ('llm_cost_log_cost_usd_range', $$'r-3'$$, $$'m', 'p', 'NaN', NULL, 1, 1, '{}', 'client', now(), now()$$),
               ('llm_cost_log_created_at_range', $$'r-4'$$, $$'m', 'p', 1, NULL, 1, 1, '{}', 'client', now() + interval '2 days', now()$$),
               ('llm_cost_log_created_at_sane', $$'r-5'$$, $$'m', 'p', 1, NULL, 1, 1, '{}', 'client', '2019-01-01 00:00:00+00', now()$$),
               ('llm_cost_log_idempotency_key_length', $$'  '$$, $$'m', 'p', 1, NULL, 1, 1, '{}', 'client', now(), now()$$),
               ('llm_cost_log_metadata_object', $$'r-7'$$, $$'m', 'p', 1, NULL, 1, 1, '[]', 'client', now(), now()$$),
               ('llm_cost_log_model_length', $$'r-8'$$, $$repeat('m', 201), 'p', 1, NULL, 1, 1, '{}', 'client', now(), now()$$),
               ('llm_cost_log_priced_usd_range', $$'r-9'$$, $$'m', 'p', 1, 0.00000000001, 1, 1, '{}', 'client', now(), now()$$),
               ('llm_cost_log_provider_length', $$'r-10'$$, $$'m', '', 1, NULL, 1, 1, '{}', 'client', now(), now()$$),
               ('llm_cost_log_tokens_nonnegative', $$'r-11'$$, $$'m', 'p', 1, NULL, -1, 1, '{}', 'client', now(), now()$$),
               ('llm_cost_log_tokens_range', $$'r-12'$$, $$'m', 'p', 1, NULL, 1, 1000000000001, '{}', 'client', now(), now()$$))
       AS x (rule, k, vals);

-- budget_spend (slice, cap, spent, reserved, excess, frozen)
SELECT is(pg_temp.outcome(format($$INSERT INTO sigledger.budget_spend (budget_id, period_start, slice, cap_usd, spent_usd,
                                                                      reserved_usd, excess_usd, frozen_usd)
                                   VALUES (%s, '2030-01-01 00:00:00+00', %s)$$, :'b', x.vals)),
          pg_temp.refused('budget_spend', x.rule), x.rule || ' refuses (' || x.vals || ')')
  FROM (VALUES ('budget_spend_cap_usd_range', $$0, 'NaN', 0, 0, 0, NULL$$),
               ('budget_spend_excess_usd_range', $$0, 10, 0, 0, -1, NULL$$),
               ('budget_spend_frozen_usd_range', $$0, 10, 0, 0, 0, 'NaN'$$),
               ('budget_spend_reserved_usd_range', $$0, 10, 0, -0.01, 0, NULL$$),
               ('budget_spend_slice_range', $$64, 10, 0, 0, 0, NULL$$),
               ('budget_spend_spent_usd_range', $$0, 10, 'NaN', 0, 0, NULL$$),
               ('budget_spend_within_cap', $$0, 10, 9, 1.01, 0, NULL$$)) AS x (rule, vals);

-- budget_reservation (key, estimate, state, closed_at, expires_at, actual, slices)
SELECT is(pg_temp.outcome(format($$INSERT INTO sigledger.budget_reservation (agent_id, budget_ids, period_starts,
                                       idempotency_key, estimate_usd, state, closed_at, expires_at, actual_usd, slices)
                                   VALUES (%L, ARRAY[%s]::bigint[], %s, %s)$$, :'a', :'b', x.periods, x.vals)),
          pg_temp.refused('budget_reservation', x.rule), x.rule || ' refuses (' || x.vals || ')')
  FROM (VALUES ('budget_reservation_actual_usd_range', $$ARRAY[now()]$$,
                $$'r-1', 1, 'open', NULL, now() + interval '1 minute', -1, NULL$$),
               ('budget_reservation_closed_at_state', $$ARRAY[now()]$$,
                $$'r-2', 1, 'open', now(), now() + interval '1 minute', NULL, NULL$$),
               ('budget_reservation_estimate_usd_range', $$ARRAY[now()]$$,
                $$'r-3', 'NaN', 'open', NULL, now() + interval '1 minute', NULL, NULL$$),
               ('budget_reservation_expires_at_after_created', $$ARRAY[now()]$$,
                $$'r-4', 1, 'open', NULL, now() - interval '1 minute', NULL, NULL$$),
               ('budget_reservation_idempotency_key_not_empty', $$ARRAY[now()]$$,
                $$' ', 1, 'open', NULL, now() + interval '1 minute', NULL, NULL$$),
               ('budget_reservation_levels_match', $$ARRAY[now(), now()]$$,
                $$'r-6', 1, 'open', NULL, now() + interval '1 minute', NULL, NULL$$),
               ('budget_reservation_settled_fields', $$ARRAY[now()]$$,
                $$'r-7', 1, 'settled', now(), now() + interval '1 minute', 1, NULL$$),
               ('budget_reservation_slices_match', $$ARRAY[now()]$$,
                $$'r-8', 1, 'open', NULL, now() + interval '1 minute', NULL, '{0,1}'$$),
               ('budget_reservation_state_valid', $$ARRAY[now()]$$,
                $$'r-9', 1, 'lost', now(), now() + interval '1 minute', NULL, NULL$$)) AS x (rule, periods, vals);

-- an UPDATE is refused the same way, and the DETAIL names the failing value
INSERT INTO sigledger.budget_spend (budget_id, period_start, slice, cap_usd)
VALUES (:'b', '2031-01-01 00:00:00+00', 0, 10);
CREATE FUNCTION pg_temp.detail(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_detail text;
BEGIN
    EXECUTE p_sql;
    RETURN 'ok';
EXCEPTION WHEN check_violation THEN
    GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
    RETURN v_detail;
END;
$$;
SELECT is(pg_temp.outcome(format($$UPDATE sigledger.budget_spend SET spent_usd = 'NaN'
                                   WHERE budget_id = %s AND period_start = '2031-01-01 00:00:00+00'$$, :'b')),
          pg_temp.refused('budget_spend', 'budget_spend_spent_usd_range'), 'an UPDATE breaking a rule is refused');
SELECT is(pg_temp.detail(format($$UPDATE sigledger.budget_spend SET spent_usd = 9, reserved_usd = 2
                                  WHERE budget_id = %s AND period_start = '2031-01-01 00:00:00+00'$$, :'b')),
          'Failing value: spent_usd + reserved_usd = 11.0000000000 > cap_usd + excess_usd = 10.0000000000',
          'the DETAIL names the failing values');

-- (2) the former constraints, verbatim, on temporary tables without NOT NULL (NULL semantics compared too)
CREATE TEMPORARY TABLE old_ledger (
    idempotency_key text, model text, provider text, tokens_input bigint, tokens_output bigint, cost_usd numeric,
    metadata jsonb, created_at timestamptz, priced_usd numeric, cost_source text, charged_at timestamptz,
    CONSTRAINT llm_cost_log_charged_at_range CHECK (((charged_at > '2020-01-01 00:00:00+00'::timestamp with time zone) AND (charged_at <= (now() + '1 day'::interval)))),
    CONSTRAINT llm_cost_log_cost_source_valid CHECK ((cost_source = ANY (ARRAY['client'::text, 'price_table'::text]))),
    CONSTRAINT llm_cost_log_cost_usd_range CHECK (((cost_usd <> 'NaN'::numeric) AND (cost_usd >= (0)::numeric) AND (cost_usd <= (1000000)::numeric) AND (cost_usd = round(cost_usd, 10)))),
    CONSTRAINT llm_cost_log_created_at_range CHECK ((created_at <= (now() + '1 day'::interval))),
    CONSTRAINT llm_cost_log_created_at_sane CHECK (((created_at > '2020-01-01 00:00:00+00'::timestamp with time zone) AND (created_at < 'infinity'::timestamp with time zone))),
    CONSTRAINT llm_cost_log_idempotency_key_length CHECK (((length(btrim(idempotency_key)) >= 1) AND (length(btrim(idempotency_key)) <= 200))),
    CONSTRAINT llm_cost_log_metadata_object CHECK ((jsonb_typeof(metadata) = 'object'::text)),
    CONSTRAINT llm_cost_log_model_length CHECK (((length(btrim(model)) >= 1) AND (length(btrim(model)) <= 200))),
    CONSTRAINT llm_cost_log_priced_usd_range CHECK (((priced_usd IS NULL) OR ((priced_usd <> 'NaN'::numeric) AND (priced_usd >= (0)::numeric) AND (priced_usd <= (100000000)::numeric) AND (priced_usd = round(priced_usd, 10))))),
    CONSTRAINT llm_cost_log_provider_length CHECK (((length(btrim(provider)) >= 1) AND (length(btrim(provider)) <= 200))),
    CONSTRAINT llm_cost_log_tokens_nonnegative CHECK (((tokens_input >= 0) AND (tokens_output >= 0))),
    CONSTRAINT llm_cost_log_tokens_range CHECK (((tokens_input <= '1000000000000'::bigint) AND (tokens_output <= '1000000000000'::bigint)))
);
CREATE TEMPORARY TABLE old_spend (
    cap_usd numeric, spent_usd numeric, reserved_usd numeric, excess_usd numeric, slice smallint, frozen_usd numeric,
    CONSTRAINT budget_spend_cap_usd_range CHECK (((cap_usd <> 'NaN'::numeric) AND (cap_usd >= (0)::numeric))),
    CONSTRAINT budget_spend_excess_usd_range CHECK (((excess_usd <> 'NaN'::numeric) AND (excess_usd >= (0)::numeric))),
    CONSTRAINT budget_spend_frozen_usd_range CHECK (((frozen_usd IS NULL) OR ((frozen_usd <> 'NaN'::numeric) AND (frozen_usd >= (0)::numeric)))),
    CONSTRAINT budget_spend_reserved_usd_range CHECK (((reserved_usd <> 'NaN'::numeric) AND (reserved_usd >= (0)::numeric))),
    CONSTRAINT budget_spend_slice_range CHECK (((slice >= 0) AND (slice <= 63))),
    CONSTRAINT budget_spend_spent_usd_range CHECK (((spent_usd <> 'NaN'::numeric) AND (spent_usd >= (0)::numeric))),
    CONSTRAINT budget_spend_within_cap CHECK (((spent_usd + reserved_usd) <= (cap_usd + excess_usd)))
);
CREATE TEMPORARY TABLE old_reservation (
    idempotency_key text, estimate_usd numeric, budget_ids bigint[], period_starts timestamptz[], state text,
    created_at timestamptz, expires_at timestamptz, closed_at timestamptz, actual_usd numeric, overrun_usd numeric,
    ledger_id bigint, slices smallint[],
    CONSTRAINT budget_reservation_actual_usd_range CHECK (((actual_usd IS NULL) OR ((actual_usd <> 'NaN'::numeric) AND (actual_usd >= (0)::numeric) AND (actual_usd <= (1000000)::numeric)))),
    CONSTRAINT budget_reservation_closed_at_state CHECK (((state = 'open'::text) = (closed_at IS NULL))),
    CONSTRAINT budget_reservation_estimate_usd_range CHECK (((estimate_usd <> 'NaN'::numeric) AND (estimate_usd >= (0)::numeric) AND (estimate_usd <= (1000000)::numeric))),
    CONSTRAINT budget_reservation_expires_at_after_created CHECK ((expires_at > created_at)),
    CONSTRAINT budget_reservation_idempotency_key_not_empty CHECK (((length(btrim(idempotency_key)) >= 1) AND (length(btrim(idempotency_key)) <= 200))),
    CONSTRAINT budget_reservation_levels_match CHECK ((((cardinality(budget_ids) >= 1) AND (cardinality(budget_ids) <= 3)) AND (cardinality(budget_ids) = cardinality(period_starts)))),
    CONSTRAINT budget_reservation_settled_fields CHECK (((state = 'settled'::text) = ((ledger_id IS NOT NULL) AND (actual_usd IS NOT NULL) AND (overrun_usd IS NOT NULL)))),
    CONSTRAINT budget_reservation_slices_match CHECK (((slices IS NULL) OR (cardinality(slices) = cardinality(budget_ids)))),
    CONSTRAINT budget_reservation_state_valid CHECK ((state = ANY (ARRAY['open'::text, 'settled'::text, 'released'::text, 'expired'::text])))
);

-- a valid value 60% of the time, else one of the edge values (as text: the row is passed as literals)
CREATE FUNCTION pg_temp.pick(p_good text, p_edges text[]) RETURNS text LANGUAGE sql AS $$
    SELECT CASE WHEN random() < 0.6 THEN p_good ELSE p_edges[1 + floor(random() * cardinality(p_edges))::int] END
$$;
-- compares the old table's verdict (its INSERT) with the function's (called as the new CHECK calls it) on
-- p_rows random rows: returns the mismatches (empty when none) and every verdict seen
CREATE FUNCTION pg_temp.compare(p_table text, p_rows int, OUT mismatches text, OUT seen text[])
LANGUAGE plpgsql AS $$
DECLARE
    v_text text[] := ARRAY['', ' ', 'a', repeat('x', 200), repeat('x', 201), ' ' || repeat('x', 200) || ' ', NULL];
    v_usd text[] := ARRAY['NaN', 'Infinity', '-Infinity', '-0.0000000001', '0', '0.00000000001', '0.01', '1000000',
                          '1000000.0000000001', '100000000', '100000000.5', NULL];
    v_money text[] := v_usd || ARRAY['-1', '5', '9', '10', '11'];
    v_ts text[] := ARRAY['-infinity', '2019-12-31 23:59:59+00', '2020-01-01 00:00:00+00',
                         '2020-01-01 00:00:00.000001+00', (now() + interval '1 day')::text,
                         (now() + interval '1 day 1 second')::text, 'infinity', NULL];
    v_tokens text[] := ARRAY['-1', '0', '1000000000000', '1000000000001', NULL];
    v_row text;
    v_old text;
    v_new text;
BEGIN
    mismatches := '';
    seen := '{}';
    FOR i IN 1 .. p_rows LOOP
        v_row := CASE p_table
            WHEN 'llm_cost_log' THEN format('%L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L',
                pg_temp.pick('k', v_text), pg_temp.pick('m', v_text), pg_temp.pick('p', v_text),
                pg_temp.pick('1', v_tokens), pg_temp.pick('1', v_tokens), pg_temp.pick('0.01', v_usd),
                pg_temp.pick('{}', ARRAY['[]', '1', 'null', '"x"', NULL]), pg_temp.pick(now()::text, v_ts),
                pg_temp.pick(NULL, v_usd), pg_temp.pick('client', ARRAY['price_table', 'Client', '', NULL]),
                pg_temp.pick(now()::text, v_ts))
            WHEN 'budget_spend' THEN format('%L, %L, %L, %L, %L, %L',
                pg_temp.pick('10', v_money), pg_temp.pick('4', v_money), pg_temp.pick('1', v_money),
                pg_temp.pick('0', v_money), pg_temp.pick('0', ARRAY['-1', '0', '63', '64', NULL]),
                pg_temp.pick(NULL, v_money))
            ELSE format('%L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L',
                pg_temp.pick('k', v_text), pg_temp.pick('1', v_usd),
                pg_temp.pick('{1}', ARRAY['{}', '{1,2}', '{1,2,3}', '{1,2,3,4}', NULL]),
                pg_temp.pick(ARRAY[now()]::text, ARRAY['{}', ARRAY[now(), now()]::text,
                                                        ARRAY[now(), now(), now()]::text, NULL]),
                pg_temp.pick('open', ARRAY['settled', 'released', 'expired', 'Open', '', NULL]),
                pg_temp.pick(now()::text, ARRAY[(now() - interval '1 minute')::text,
                                                (now() + interval '1 minute')::text, NULL]),
                pg_temp.pick((now() + interval '1 minute')::text, ARRAY[now()::text,
                                                                        (now() - interval '1 minute')::text, NULL]),
                pg_temp.pick(NULL, ARRAY[now()::text]), pg_temp.pick(NULL, v_usd),
                pg_temp.pick(NULL, ARRAY['0', '1']), pg_temp.pick(NULL, ARRAY['1']),
                pg_temp.pick(NULL, ARRAY['{0}', '{0,1}', '{0,1,2}', '{}']))
        END;
        BEGIN
            EXECUTE format('INSERT INTO pg_temp.%s VALUES (%s)',
                           CASE p_table WHEN 'llm_cost_log' THEN 'old_ledger' WHEN 'budget_spend' THEN 'old_spend'
                                        ELSE 'old_reservation' END, v_row);
            v_old := 'ok';
        EXCEPTION WHEN check_violation THEN
            GET STACKED DIAGNOSTICS v_old = CONSTRAINT_NAME;
        END;
        BEGIN
            EXECUTE format('SELECT CASE WHEN sigledger.%I(%s%s) THEN ''ok'' ELSE ''false'' END',
                           '_' || p_table || '_rules',
                           CASE p_table WHEN 'llm_cost_log' THEN '''sigledger.llm_cost_log''::regclass, ' ELSE '' END,
                           v_row)
               INTO v_new;
        EXCEPTION WHEN check_violation THEN
            GET STACKED DIAGNOSTICS v_new = CONSTRAINT_NAME;
        END;
        IF v_old IS DISTINCT FROM v_new AND length(mismatches) < 2000 THEN
            mismatches := mismatches || format('(%s): old %s, new %s; ', v_row, v_old, v_new);
        END IF;
        IF NOT v_old = ANY (seen) THEN
            seen := seen || v_old;
        END IF;
    END LOOP;
END;
$$;

SELECT setseed(0.13);
CREATE TEMPORARY TABLE compared AS
SELECT x.t, x.n, c.mismatches, c.seen
  FROM (VALUES (1, 'llm_cost_log', 12), (2, 'budget_spend', 7), (3, 'budget_reservation', 9)) AS x (o, t, n),
       LATERAL pg_temp.compare(x.t, 3000) c
 ORDER BY x.o;
SELECT is(mismatches, '', t || ': the function names the rule the former constraints named, on 3,000 random rows')
  FROM compared;
SELECT is(cardinality(seen), n + 1, t || ': every former rule was broken by some row (and some rows passed)')
  FROM compared;

SELECT * FROM finish();
ROLLBACK;
