-- 111: the internals of record_costs (the harness's flush), set-based.
--
-- The rule (issue 13's review): a batch behaves exactly as if its rows were passed to record_cost one after
-- another, in batch order, each refusal quarantined instead of raised: the same rows inserted, the same replays,
-- the same SQLSTATE and message for each refused row. So a key the ledger holds makes every row of it in the
-- batch a replay or a 23505 conflict with that stored row; otherwise its first valid row is inserted and the
-- later ones are replays or conflicts with it; a replay needs the same agent and, when the row gives a cost,
-- the same cost (an omitted cost is a replay whatever the price says). An absent field takes record_cost's
-- DEFAULT (tokens 0, metadata {}), a JSON null is record_cost's NULL argument (tokens: 22004; metadata: {};
-- cost: priced; created_at: now). tests/sql/ledger_batch_sequential.sql compares the two over a table of cases.
-- Beyond the rows: budgets are charged once per (budget, period), after the reservations' settlements, so
-- when a cap is reached the excess can differ from the sequential one, the alerts of one batch carry the
-- spend after the whole batch, and the quarantine order is not batch order (rows that do not even cast
-- first, refused reservation keys last).
--
-- _record_costs_set does a whole batch in one statement: it reads every element, validates it with the
-- rules of record_cost (the first failed rule of a row gives its SQLSTATE and reason, the same messages as
-- _cost_validate), quarantines the bad rows, looks the keys of the good ones up in the key registry, inserts
-- the new ones in key order (the ledger's trigger registers each key, as for every writer: two overlapping
-- batches take shared keys in the same order, no deadlock), compares replays with what the ledger holds, and
-- returns what to charge per (budget, period) in lock order. A value that does not even cast (a malformed
-- uuid, number or timestamp) makes the statement raise a data_exception; record_costs then rolls it back,
-- has _record_costs_cast cast row by row (each in a subtransaction: the only per-row exception block; what
-- fails is quarantined with the cast's own SQLSTATE) and runs the statement again on the rest, in canonical
-- form. A key that a concurrent batch commits after the statement's snapshot was taken raises 23505 from the
-- trigger (after waiting for that batch); record_costs runs the statement again with a new snapshot.
-- Text: key, model and provider pass the text rules (_text_norm, 005_text.sql) unless they are printable ASCII
-- without surrounding spaces and at most 200 characters, which the rules accept as they are (the common case:
-- no function call per row). model and provider are stored in their canonical form, the key as given.
-- The test is a star and a length, not a bounded repetition ({0,198}): PostgreSQL's regex engine takes ~57 us
-- per match for the bounded form against ~4 us (it halved record_costs' throughput; make bench-ledger).

-- p_sent: the batch as the caller sent it, when p_batch is its cast form (_record_costs_cast: the same rows in
-- the same order): a quarantined row keeps the payload it was sent with, and so its replay_key, whatever the
-- other rows of the batch (a row rewritten by the casts, e.g. created_at as text of the session's TimeZone,
-- would have another key on a flush that takes the casts and one that does not)
DROP FUNCTION IF EXISTS sigledger._record_costs_set(jsonb);
CREATE OR REPLACE FUNCTION sigledger._record_costs_set(
    p_batch jsonb, p_sent jsonb DEFAULT NULL,
    OUT inserted integer, OUT duplicates integer, OUT quarantined integer,
    OUT charge_budget_ids bigint[], OUT charge_periods timestamptz[], OUT charge_amounts numeric[],
    OUT charge_caps numeric[], OUT charge_limits numeric[], OUT charge_thresholds text[], OUT charge_slices integer[],
    OUT reserved jsonb)
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    c_backdate_window CONSTANT interval := interval '7 days';
    v_now timestamptz := now();
BEGIN
    WITH f AS (
        -- the casts: a value that does not cast raises here (the caller then casts row by row). The element
        -- itself is not carried on (a quarantined row's payload is read back by its position): every CTE below
        -- that is materialized stores only the columns. (->> on an element that is not an object is NULL.)
        SELECT x.ord, jsonb_typeof(x.elem) AS typ, jsonb_typeof(x.elem) = 'object' AS is_obj,
               x.elem ->> 'idempotency_key' AS key,
               (x.elem ->> 'agent_id')::uuid AS agent_id,
               x.elem ->> 'model' AS model,
               x.elem ->> 'provider' AS provider,
               -- an absent field takes record_cost's DEFAULT, a JSON null is record_cost's NULL argument:
               -- tokens NULL are refused (22004), metadata NULL is '{}' (as _cost_validate does)
               coalesce((x.elem ->> 'input_tokens')::bigint, CASE WHEN x.elem ? 'input_tokens' THEN NULL ELSE 0 END)
                   AS tin,
               coalesce((x.elem ->> 'output_tokens')::bigint, CASE WHEN x.elem ? 'output_tokens' THEN NULL ELSE 0 END)
                   AS tout,
               (x.elem ->> 'cost_usd')::numeric AS cost_given,
               coalesce((x.elem ->> 'created_at')::timestamptz, v_now) AS created_at,
               coalesce(nullif(x.elem -> 'metadata', 'null'::jsonb), '{}'::jsonb) AS metadata
          FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS x(elem, ord)
    ), g AS MATERIALIZED (
        -- plain values pass as they are; the rules (_text_norm) run only for the others, in CASE branches (a
        -- LATERAL join per column cost a third of the throughput even when it was filtered out)
        SELECT f.ord, f.typ, f.is_obj, f.key, f.agent_id, f.tin, f.tout, f.cost_given, f.created_at, f.metadata,
               f.key ~ '^[!-~]([ -~]*[!-~])?$' AND length(f.key) <= 200 AS key_plain,
               f.model ~ '^[!-~]([ -~]*[!-~])?$' AND length(f.model) <= 200 AS model_plain,
               f.provider ~ '^[!-~]([ -~]*[!-~])?$' AND length(f.provider) <= 200 AS provider_plain,
               f.model AS model_given, f.provider AS provider_given
          FROM f
    ), h AS (
        SELECT g.ord, g.typ, g.is_obj, g.key, g.agent_id,
               CASE WHEN g.model_plain IS NOT FALSE THEN g.model_given
                    ELSE coalesce((sigledger._text_norm(g.model_given, 'model', 200, 800)).value, g.model_given) END AS model,
               CASE WHEN g.provider_plain IS NOT FALSE THEN g.provider_given
                    ELSE coalesce((sigledger._text_norm(g.provider_given, 'provider', 200, 800)).value, g.provider_given) END
                   AS provider,
               g.tin, g.tout, g.cost_given, g.created_at, g.metadata,
               CASE WHEN g.key_plain IS NOT FALSE THEN NULL
                    ELSE (sigledger._text_norm(g.key, 'idempotency_key', 200, 800, 'key')).error END AS key_error,
               CASE WHEN g.model_plain IS NOT FALSE THEN NULL
                    ELSE (sigledger._text_norm(g.model_given, 'model', 200, 800)).error END AS model_error,
               CASE WHEN g.provider_plain IS NOT FALSE THEN NULL
                    ELSE (sigledger._text_norm(g.provider_given, 'provider', 200, 800)).error END AS provider_error
          FROM g
    ), v AS (
        -- the price, the agent and the first rule a row breaks, in one pass (the price as a lateral join, so that
        -- the rules read it once)
        SELECT h.*, pr.priced, coalesce(h.cost_given, pr.priced) AS cost,
               CASE WHEN h.cost_given IS NULL THEN 'price_table' ELSE 'client' END AS source,
               h.key LIKE 'reservation:%' AND h.key ~ '^reservation:[0-9]{1,18}$' AS is_reservation,
               -- the first rule a row breaks, in _cost_validate's order (NULL: valid)
               CASE WHEN NOT h.is_obj THEN 1
                    WHEN h.key IS NULL THEN 2 WHEN h.key_error IS NOT NULL THEN 3
                    WHEN h.model IS NULL THEN 5 WHEN h.model_error IS NOT NULL THEN 6
                    WHEN h.provider IS NULL THEN 8 WHEN h.provider_error IS NOT NULL THEN 9
                    WHEN h.tin IS NULL THEN 10 WHEN h.tin < 0 THEN 11 WHEN h.tin > 1000000000000 THEN 12
                    WHEN h.tout IS NULL THEN 28 WHEN h.tout < 0 THEN 13 WHEN h.tout > 1000000000000 THEN 14
                    WHEN h.created_at <= timestamptz '2020-01-01 00:00:00+00' OR h.created_at > v_now + interval '1 day' THEN 15
                    WHEN h.created_at < v_now - c_backdate_window THEN 16
                    WHEN jsonb_typeof(h.metadata) <> 'object' THEN 17
                    WHEN h.agent_id IS NULL THEN 18 WHEN a.id IS NULL THEN 19
                    WHEN pr.priced > 100000000 THEN 20
                    WHEN h.cost_given IS NULL AND pr.priced IS NULL THEN 21
                    WHEN coalesce(h.cost_given, pr.priced) IN ('NaN', 'Infinity', '-Infinity') THEN 22
                    WHEN coalesce(h.cost_given, pr.priced) < 0 THEN 23
                    WHEN coalesce(h.cost_given, pr.priced) > 1000000 THEN 24
                    WHEN coalesce(h.cost_given, pr.priced) <> round(coalesce(h.cost_given, pr.priced), 10) THEN 25
                    WHEN h.key LIKE 'check:%' THEN 26
                    WHEN h.key LIKE 'reservation:%' AND h.key !~ '^reservation:[0-9]{1,18}$' THEN 27
               END AS rule
          FROM h
          LEFT JOIN agent_registry a ON a.id = h.agent_id
          LEFT JOIN LATERAL (SELECT round((h.tin * mp.input_usd_per_mtok + h.tout * mp.output_usd_per_mtok) / 1000000, 10)
                                    AS priced
                               FROM model_price mp
                              WHERE mp.provider = h.provider AND mp.model = h.model AND mp.valid_from <= h.created_at
                              ORDER BY mp.valid_from DESC LIMIT 1) pr ON true
    ), n AS (
        -- the valid rows of the application's own keys, each with the registry's entry for its key when this
        -- statement sees one. As record_cost one row after another: a key the ledger holds makes every row of
        -- it a replay or a conflict with the stored row; otherwise the first valid row of the key is inserted
        -- and the later ones are replays or conflicts with it (the keys compared as bytes: "C" sorts without
        -- the locale)
        SELECT d.*, k.ledger_id AS s_id, k.created_at AS s_at
          FROM (SELECT v.ord, v.key, v.agent_id, v.provider, v.model, v.tin, v.tout, v.cost, v.cost_given, v.priced,
                       v.source, v.created_at, v.metadata,
                       row_number() OVER w AS rn, first_value(v.agent_id) OVER w AS first_agent,
                       first_value(v.cost) OVER w AS first_cost
                  FROM v WHERE v.rule IS NULL AND NOT v.is_reservation
                WINDOW w AS (PARTITION BY v.key COLLATE "C" ORDER BY v.ord)) d
          LEFT JOIN llm_cost_log_key k ON k.idempotency_key = d.key
    ), ins AS (
        -- the new keys, in key order: the ledger's trigger registers each key as it does for every writer. A key
        -- that a concurrent transaction registered makes it wait for that one (two batches sharing keys take
        -- them in the same order: no deadlock); if that one committed, the trigger raises 23505 and record_costs
        -- runs this statement again, with a snapshot that sees the key
        INSERT INTO llm_cost_log (idempotency_key, agent_id, provider, model, tokens_input, tokens_output,
                                  cost_usd, priced_usd, cost_source, reservation_id, charged_at, created_at, metadata)
        SELECT n.key, n.agent_id, n.provider, n.model, n.tin, n.tout, n.cost, n.priced, n.source,
               NULL, n.created_at, n.created_at, n.metadata
          FROM n WHERE n.rn = 1 AND n.s_id IS NULL
         ORDER BY n.key COLLATE "C"
        RETURNING id, idempotency_key, agent_id, charged_at, cost_usd
    ), stored AS (
        -- rows of keys the ledger holds: a replay when it holds the same agent and, when the row gives one, the
        -- same cost (_cost_insert's rule)
        SELECT y.*, (y.s_agent = y.agent_id AND (y.cost_given IS NULL OR y.s_cost = y.cost_given)) AS same
          FROM (SELECT n.ord, n.key, n.agent_id, n.cost, n.cost_given, n.s_id,
                       (SELECT x.agent_id FROM llm_cost_log x WHERE x.id = n.s_id AND x.created_at = n.s_at) AS s_agent,
                       (SELECT x.cost_usd FROM llm_cost_log x WHERE x.id = n.s_id AND x.created_at = n.s_at) AS s_cost
                  FROM n WHERE n.s_id IS NOT NULL) y
    ), later AS (
        -- the later rows of a key this batch inserts: the same rule against the first row (what the ledger
        -- holds once it is inserted)
        SELECT n.ord, n.key, n.agent_id, n.cost, n.first_agent, n.first_cost,
               (n.agent_id = n.first_agent AND (n.cost_given IS NULL OR n.cost_given = n.first_cost)) AS same
          FROM n WHERE n.rn > 1 AND n.s_id IS NULL
    ), q AS (
        -- (a row quarantined by an earlier flush of the same batch is not quarantined again: replay_key, V8_103;
        -- it is counted as quarantined, so a replayed batch gets the answer of its first flush)
        INSERT INTO cost_quarantine (idempotency_key, payload, sqlstate, reason, replay_key)
        SELECT left(x.key, 200), coalesce(p_sent, p_batch) -> (x.ord::integer - 1), x.state, x.reason,
               _quarantine_replay_key(x.key, coalesce(p_sent, p_batch) -> (x.ord::integer - 1))
          FROM (
            SELECT v.ord, v.key,
                   CASE WHEN v.rule IN (2, 5, 8, 10, 18, 28) THEN '22004' WHEN v.rule IN (12, 14, 20, 24, 25) THEN '22003'
                        WHEN v.rule = 19 THEN 'P0002' ELSE '22023' END AS state,
                   CASE v.rule
                       WHEN 1 THEN format('batch row must be a JSON object, got %s', v.typ)
                       WHEN 2 THEN 'idempotency_key must not be NULL'
                       WHEN 3 THEN v.key_error
                       WHEN 5 THEN 'model must not be NULL'
                       WHEN 6 THEN v.model_error
                       WHEN 8 THEN 'provider must not be NULL'
                       WHEN 9 THEN v.provider_error
                       WHEN 10 THEN 'input_tokens must not be NULL'
                       WHEN 28 THEN 'output_tokens must not be NULL'
                       WHEN 11 THEN format('input_tokens must not be negative, got %s', v.tin)
                       WHEN 12 THEN format('input_tokens must be at most 1e12, got %s', v.tin)
                       WHEN 13 THEN format('output_tokens must not be negative, got %s', v.tout)
                       WHEN 14 THEN format('output_tokens must be at most 1e12, got %s', v.tout)
                       WHEN 15 THEN format('created_at must lie after 2020-01-01 and at most 1 day ahead, got %s', v.created_at)
                       WHEN 16 THEN format('created_at must be at most %s old (the spool-replay window), got %s',
                                           c_backdate_window, v.created_at)
                       WHEN 17 THEN format('metadata must be a JSON object, got %s', jsonb_typeof(v.metadata))
                       WHEN 18 THEN 'agent_id must not be NULL'
                       WHEN 19 THEN format('unknown agent %s', v.agent_id)
                       WHEN 20 THEN format('priced cost of %s input + %s output tokens of %s/%s is %s USD, above 100000000',
                                           v.tin, v.tout, v.provider, v.model, v.priced)
                       WHEN 21 THEN format('cost_usd omitted and no price for provider %s model %s at %s',
                                           _text_quote(v.provider), _text_quote(v.model), v.created_at)
                       WHEN 22 THEN format('%s must be a finite number, got %s',
                                           CASE WHEN v.cost_given IS NULL THEN 'priced cost_usd' ELSE 'cost_usd' END, v.cost)
                       WHEN 23 THEN format('cost_usd must not be negative, got %s', v.cost)
                       WHEN 24 THEN format('%s must be at most 1000000, got %s',
                                           CASE WHEN v.cost_given IS NULL THEN 'priced cost_usd' ELSE 'cost_usd' END,
                                           CASE WHEN length(v.cost::text) > 40
                                                THEN left(v.cost::text, 20) || '... (' || length(v.cost::text) || ' digits)'
                                                ELSE v.cost::text END)
                       WHEN 25 THEN format('cost_usd must have at most 10 decimal places (1e-10 USD), got %s',
                                           CASE WHEN length(v.cost::text) > 60
                                                THEN left(v.cost::text, 40) || '... (' || length(v.cost::text) || ' characters)'
                                                ELSE v.cost::text END)
                       WHEN 26 THEN format('idempotency key %L is in the key space check: that the database reserves for check_and_record_budget', left(v.key, 200))
                       ELSE format('idempotency key %L is in the key space reservation: that the database reserves for settlements', left(v.key, 200))
                   END AS reason
              FROM v WHERE v.rule IS NOT NULL
            UNION ALL
            SELECT s.ord, s.key, '23505',
                   format('idempotency key %L already records %s USD for agent %s (ledger %s), not %s USD for agent %s',
                          left(s.key, 200), s.s_cost, s.s_agent, s.s_id, s.cost, s.agent_id)
              FROM stored s WHERE NOT s.same
            UNION ALL
            SELECT l.ord, l.key, '23505',
                   format('idempotency key %L already records %s USD for agent %s (ledger %s), not %s USD for agent %s',
                          left(l.key, 200), l.first_cost, l.first_agent,
                          (SELECT i.id FROM ins i WHERE i.idempotency_key = l.key), l.cost, l.agent_id)
              FROM later l WHERE NOT l.same
          ) x
         ORDER BY x.ord
        ON CONFLICT (replay_key) DO NOTHING
        RETURNING 1
    ), spent AS MATERIALIZED (
        -- the inserted costs per agent and UTC day (no budget period is shorter than a day): the budget chains
        -- are then joined per agent and day, not per row
        SELECT ins.agent_id, date_trunc('day', ins.charged_at AT TIME ZONE 'UTC') AS day, sum(ins.cost_usd) AS amount
          FROM ins GROUP BY 1, 2
    ), chain AS (
        -- the budgets each inserted agent's costs count against (agent, team, org; an agent budget without a
        -- limit of its own is not a level)
        SELECT a.agent_id, b.id, b.level, b.period, b.limit_usd, b.grace_ratio, b.alert_thresholds, b.slices
          FROM (SELECT DISTINCT spent.agent_id FROM spent) a
          JOIN budget ab ON ab.agent_id = a.agent_id
          JOIN LATERAL (SELECT ab.*
                        UNION ALL SELECT t.* FROM budget t WHERE t.id = ab.parent_id
                        UNION ALL SELECT g.* FROM budget t JOIN budget g ON g.id = t.parent_id WHERE t.id = ab.parent_id) b
            ON b.limit_usd IS NOT NULL
    ), charges AS (
        SELECT c.id, CASE c.level WHEN 'org' THEN 0 WHEN 'team' THEN 1 ELSE 2 END AS rank,
               -- (the period inline: _period_start's CASE, kept in step, on the UTC day of charged_at; a PL/pgSQL
               -- call per row cost 15 ms per 1,000 rows)
               CASE c.period WHEN 'none' THEN timestamptz '1970-01-01 00:00:00+00'
                    WHEN 'daily' THEN sp.day AT TIME ZONE 'UTC'
                    WHEN 'weekly' THEN date_trunc('week', sp.day) AT TIME ZONE 'UTC'
                    ELSE date_trunc('month', sp.day) AT TIME ZONE 'UTC' END AS ps,
               sum(sp.amount) AS amount,
               min(c.limit_usd) AS limit_usd, min(c.limit_usd * (1 + c.grace_ratio)) AS cap,
               min(c.alert_thresholds::text) AS thresholds, min(c.slices) AS slices
          FROM spent sp JOIN chain c ON c.agent_id = sp.agent_id
         GROUP BY 1, 2, 3
    )
    SELECT (SELECT count(*) FROM ins),
           (SELECT count(*) FROM stored WHERE same) + (SELECT count(*) FROM later WHERE same),
           -- the rows q quarantines, those an earlier flush quarantined included (q runs whether read or not)
           (SELECT count(*) FROM v WHERE v.rule IS NOT NULL) + (SELECT count(*) FROM stored WHERE NOT stored.same)
           + (SELECT count(*) FROM later WHERE NOT later.same),
           (SELECT array_agg(ch.id ORDER BY ch.rank, ch.id, ch.ps) FROM charges ch),
           (SELECT array_agg(ch.ps ORDER BY ch.rank, ch.id, ch.ps) FROM charges ch),
           (SELECT array_agg(ch.amount ORDER BY ch.rank, ch.id, ch.ps) FROM charges ch),
           (SELECT array_agg(ch.cap ORDER BY ch.rank, ch.id, ch.ps) FROM charges ch),
           (SELECT array_agg(ch.limit_usd ORDER BY ch.rank, ch.id, ch.ps) FROM charges ch),
           (SELECT array_agg(ch.thresholds ORDER BY ch.rank, ch.id, ch.ps) FROM charges ch),
           (SELECT array_agg(ch.slices::integer ORDER BY ch.rank, ch.id, ch.ps) FROM charges ch),
           (SELECT jsonb_agg(jsonb_build_object(
                       'elem', coalesce(p_sent, p_batch) -> (v.ord::integer - 1), 'reservation_id', substr(v.key, 13)::bigint, 'agent_id', v.agent_id,
                       'cost_usd', v.cost, 'cost_given', v.cost_given, 'priced_usd', v.priced, 'cost_source', v.source,
                       'input_tokens', v.tin, 'output_tokens', v.tout, 'model', v.model, 'provider', v.provider,
                       'metadata', v.metadata, 'created_at', v.created_at) ORDER BY v.ord)
              FROM v WHERE v.rule IS NULL AND v.is_reservation)
      INTO inserted, duplicates, quarantined, charge_budget_ids, charge_periods, charge_amounts, charge_caps,
           charge_limits, charge_thresholds, charge_slices, reserved;
END;
$$;

-- _record_costs_cast: the fallback for a batch holding a value that does not cast. Each row's casts run in a
-- subtransaction (no write inside, so it takes no XID); a row that fails is quarantined with the cast's
-- SQLSTATE and message, the others come back in canonical form (uuid, integers, text of the numeric and of
-- the timestamp) for _record_costs_set, with sent: the same rows as they were sent (its p_sent); bad counts the
-- quarantined rows.
DROP FUNCTION IF EXISTS sigledger._record_costs_rows(jsonb);
DROP FUNCTION IF EXISTS sigledger._record_costs_cast(jsonb);
CREATE OR REPLACE FUNCTION sigledger._record_costs_cast(p_batch jsonb, OUT clean jsonb, OUT bad integer,
                                                        OUT sent jsonb)
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_elem jsonb;
    v_row jsonb;
    v_state text;
    v_msg text;
BEGIN
    clean := '[]'::jsonb;
    sent := '[]'::jsonb;
    bad := 0;
    FOR v_elem IN SELECT e FROM jsonb_array_elements(p_batch) e LOOP
        IF jsonb_typeof(v_elem) <> 'object' THEN
            clean := clean || jsonb_build_array(v_elem);  -- quarantined by the set-based rules
            sent := sent || jsonb_build_array(v_elem);
            CONTINUE;
        END IF;
        BEGIN
            v_row := v_elem || jsonb_strip_nulls(jsonb_build_object(
                'agent_id', (v_elem ->> 'agent_id')::uuid,
                'input_tokens', (v_elem ->> 'input_tokens')::bigint,
                'output_tokens', (v_elem ->> 'output_tokens')::bigint,
                'cost_usd', ((v_elem ->> 'cost_usd')::numeric)::text,
                'created_at', ((v_elem ->> 'created_at')::timestamptz)::text));
            clean := clean || jsonb_build_array(v_row);
            sent := sent || jsonb_build_array(v_elem);
        EXCEPTION WHEN data_exception THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
            INSERT INTO sigledger.cost_quarantine (idempotency_key, payload, sqlstate, reason, replay_key)
            VALUES (left(v_elem ->> 'idempotency_key', 200), v_elem, v_state, v_msg,
                    sigledger._quarantine_replay_key(v_elem ->> 'idempotency_key', v_elem))
            ON CONFLICT (replay_key) DO NOTHING;
            bad := bad + 1;
        END;
    END LOOP;
END;
$$;

-- _record_costs_charge: the charges of a batch, one per (budget, period), given in the global lock order
-- (level, budget id, period). When every budget has one slice and every period's row exists and has room for
-- its charge, two statements do them all: the rows are locked in the given order (FOR UPDATE under ORDER BY:
-- each row is locked as the sort returns it), then one UPDATE adds every charge. Otherwise (a sliced budget, a
-- period's first charge, a charge beyond the room: excess) each charge goes through _spend_apply in the same
-- order, as one call per charge did before. The set-based attempt runs in a subtransaction whose rollback
-- releases the row locks it took, so the per-charge path starts holding none of them: it never locks a row
-- while holding one later in the order. Alerts: a charge that reached its row's next_alert_usd goes through
-- _spend_crossed, as in _spend_apply.
CREATE OR REPLACE FUNCTION sigledger._record_costs_charge(
    p_ids bigint[], p_periods timestamptz[], p_amounts numeric[], p_caps numeric[], p_limits numeric[],
    p_thresholds text[], p_slices integer[])
RETURNS void
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_n integer := coalesce(cardinality(p_ids), 0);
    v_done boolean := false;
    v_ready integer;
    v_crossed integer[];
    v_spent numeric[];
    v_count integer;
    j integer;
    s record;
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    IF 1 = ALL (p_slices) THEN
        BEGIN
            SELECT count(*) FILTER (WHERE x.fits) INTO v_ready
              FROM (SELECT c.amount <= 0 OR sp.spent_usd + sp.reserved_usd + c.amount <= sp.cap_usd AS fits
                      FROM unnest(p_ids, p_periods, p_amounts) WITH ORDINALITY AS c(id, ps, amount, i)
                      JOIN budget_spend sp ON sp.budget_id = c.id AND sp.period_start = c.ps AND sp.slice = 0
                     ORDER BY c.i
                       FOR UPDATE OF sp) x;
            IF v_ready < v_n THEN
                RAISE EXCEPTION USING ERRCODE = 'SLZ00', MESSAGE = 'a charge needs _spend_apply (internal, never raised to callers)';
            END IF;
            WITH c AS (
                SELECT * FROM unnest(p_ids, p_periods, p_amounts, p_thresholds) WITH ORDINALITY AS c(id, ps, amount, thresholds, i)
            ), u AS (
                UPDATE budget_spend sp SET spent_usd = sp.spent_usd + c.amount
                  FROM c
                 WHERE sp.budget_id = c.id AND sp.period_start = c.ps AND sp.slice = 0
                RETURNING c.i, sp.spent_usd, c.thresholds,
                          sp.next_alert_usd IS NULL OR sp.spent_usd >= sp.next_alert_usd AS crossed
            )
            SELECT count(*), array_agg(u.i ORDER BY u.i) FILTER (WHERE u.alert),
                   array_agg(u.spent_usd ORDER BY u.i) FILTER (WHERE u.alert)
              INTO v_count, v_crossed, v_spent
              FROM (SELECT u.*, u.crossed AND p_amounts[u.i] > 0 AND cardinality(u.thresholds::numeric[]) > 0 AS alert
                      FROM u) u;
            IF v_count <> v_n THEN
                RAISE EXCEPTION USING ERRCODE = 'XX000',
                    MESSAGE = format('record_costs charged %s of %s locked budget periods', v_count, v_n);
            END IF;
            v_done := true;
        EXCEPTION WHEN SQLSTATE 'SLZ00' THEN
            v_done := false;
        END;
    END IF;
    IF v_done THEN
        FOR i IN 1 .. coalesce(cardinality(v_crossed), 0) LOOP
            v_count := _spend_crossed(p_ids[v_crossed[i]], p_periods[v_crossed[i]],
                                      v_spent[i] - p_amounts[v_crossed[i]], v_spent[i]);
        END LOOP;
        RETURN;
    END IF;
    FOR i IN 1 .. v_n LOOP
        IF i < v_n AND p_ids[i + 1] = p_ids[i] AND (i = 1 OR p_ids[i - 1] <> p_ids[i]) THEN
            -- the first of several periods of one budget (costs of different days): its missing periods are
            -- created before any of its rows is charged. Creating one takes the budget row FOR SHARE
            -- (_spend_ensure, 101), which comes before the budget's spend rows in the lock order: a settings
            -- change holding the row waits for them, so a creation after a charge of the same budget could
            -- deadlock with it. (A charge's periods of one budget are adjacent: the order is level, id, period.)
            j := i;
            WHILE j <= v_n AND p_ids[j] = p_ids[i] LOOP
                v_count := _spend_ensure(p_ids[j], p_periods[j], p_caps[j], p_slices[j]);
                j := j + 1;
            END LOOP;
        END IF;
        s := _spend_apply(p_ids[i], p_periods[i], p_caps[i], p_slices[i], NULL, p_amounts[i], 0, false, p_limits[i],
                          p_thresholds[i]::numeric[]);
    END LOOP;
END;
$$;
