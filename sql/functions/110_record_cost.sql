-- 110: recording costs in the ledger: record_cost (one), record_costs (a batch from the harness flush),
-- add_model_price (the dated price table).

-- _cost_insert: inserts one validated ledger row unless its idempotency key exists. Returns the ledger id
-- and whether this call inserted it. The ledger is partitioned by created_at (V4_004), so the key's global
-- uniqueness lives in the registry llm_cost_log_key: the key is claimed there first with the id the row will
-- have (a concurrent caller of the same key waits for this transaction, then sees the key: one winner), and
-- the ledger row follows with that id (its BEFORE INSERT trigger finds the claim and lets it through).
-- A key that exists is a replay only if it records the same agent and, when the caller gave one, the same
-- cost (amounts are exact): anything else is 23505 naming both.
CREATE OR REPLACE FUNCTION sigledger._cost_insert(
    p_idempotency_key text, p_agent_id uuid, p_model text, p_provider text,
    p_input_tokens bigint, p_output_tokens bigint, p_cost_usd numeric, p_priced_usd numeric, p_cost_source text,
    p_reservation_id bigint, p_charged_at timestamptz, p_created_at timestamptz, p_metadata jsonb,
    OUT ledger_id bigint, OUT inserted boolean)
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    o record;
BEGIN
    INSERT INTO sigledger.llm_cost_log_key AS k (idempotency_key, ledger_id, reservation_id, created_at)
    VALUES (p_idempotency_key, nextval('sigledger.llm_cost_log_id_seq'::regclass), p_reservation_id, p_created_at)
    ON CONFLICT ON CONSTRAINT llm_cost_log_key_pkey DO NOTHING
    RETURNING k.ledger_id INTO ledger_id;
    inserted := ledger_id IS NOT NULL;
    IF inserted THEN
        INSERT INTO sigledger.llm_cost_log (id, idempotency_key, agent_id, provider, model, tokens_input,
                                           tokens_output, cost_usd, priced_usd, cost_source, reservation_id,
                                           charged_at, created_at, metadata)
        OVERRIDING SYSTEM VALUE
        VALUES (ledger_id, p_idempotency_key, p_agent_id, p_provider, p_model, p_input_tokens, p_output_tokens,
                p_cost_usd, p_priced_usd, p_cost_source, p_reservation_id, p_charged_at, p_created_at, p_metadata);
    ELSE
        -- the key exists (possibly committed by a concurrent caller a moment ago): a replay if it is the same cost
        SELECT k.ledger_id AS id, l.agent_id, l.cost_usd, l.cost_source INTO o
          FROM sigledger.llm_cost_log_key k
          JOIN sigledger.llm_cost_log l ON l.id = k.ledger_id AND l.created_at = k.created_at
         WHERE k.idempotency_key = p_idempotency_key;
        ledger_id := o.id;
        IF o.agent_id <> p_agent_id OR (p_cost_source = 'client' AND o.cost_usd <> p_cost_usd) THEN
            RAISE EXCEPTION USING ERRCODE = '23505',
                MESSAGE = format('idempotency key %L already records %s USD for agent %s (ledger %s), not %s USD for agent %s',
                                 left(p_idempotency_key, 200), o.cost_usd, o.agent_id, o.id, p_cost_usd, p_agent_id),
                HINT = 'A replay must carry the same agent and cost; use a new key for a new cost.';
        END IF;
    END IF;
END;
$$;

-- _reserved_key: how an application key relates to the key spaces the database owns: NULL (the
-- application's own), or the id of the reservation whose settlement key it is (reservation:<id>). Keys of
-- the other reserved spaces (check:..., reservation:... that names no id) are refused with 22023.
CREATE OR REPLACE FUNCTION sigledger._reserved_key(p_key text)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_key LIKE 'reservation:%' THEN
        IF p_key ~ '^reservation:[0-9]{1,18}$' THEN
            RETURN substr(p_key, 13)::bigint;
        END IF;
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('idempotency key %L is in the key space reservation: that the database reserves for settlements',
                             left(p_key, 200)),
            HINT = 'reservation:<id> records the cost of reservation <id>; choose another key for anything else.';
    ELSIF p_key LIKE 'check:%' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('idempotency key %L is in the key space check: that the database reserves for check_and_record_budget',
                             left(p_key, 200)),
            HINT = 'Choose a key that does not start with check:.';
    END IF;
    RETURN NULL;
END;
$$;

-- record_cost: appends one LLM call cost to the ledger and charges the agent's budgets (if any) for the
-- period of created_at. Idempotent: the same key again returns the same id and changes nothing.
-- A key reservation:<id> records the cost of that reservation (131_reservation_settle.sql).
CREATE OR REPLACE FUNCTION sigledger.record_cost(
    p_idempotency_key text,
    p_agent_id uuid,
    p_model text,
    p_provider text,
    p_input_tokens bigint DEFAULT 0,
    p_output_tokens bigint DEFAULT 0,
    p_cost_usd numeric DEFAULT NULL,
    p_created_at timestamptz DEFAULT NULL,
    p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
-- bounded wait for a hot budget row: a blocking lock (not NOWAIT) that gives up with 55P03 after 5s
SET lock_timeout = '5s'
AS $$
DECLARE
    v record;
    v_ins record;
    c record;
    s record;
    v_reservation bigint;
BEGIN
    v := _cost_validate(p_idempotency_key, p_agent_id, p_model, p_provider, p_input_tokens, p_output_tokens,
                        p_cost_usd, p_created_at, p_metadata);
    v_reservation := _reserved_key(p_idempotency_key);
    IF v_reservation IS NOT NULL THEN
        v_ins := _reservation_settle(v_reservation, 'record', p_agent_id, v.cost_usd, p_cost_usd, v.priced_usd,
                                     v.cost_source, p_input_tokens, p_output_tokens, v.model, v.provider, v.metadata,
                                     v.created_at);
        RETURN v_ins.ledger_id;
    END IF;
    v_ins := _cost_insert(p_idempotency_key, p_agent_id, v.model, v.provider, p_input_tokens, p_output_tokens,
                          v.cost_usd, v.priced_usd, v.cost_source, NULL, v.created_at, v.created_at, v.metadata);
    IF v_ins.inserted THEN
        -- the cost is already spent: charge it (above the room of a budget it becomes recorded excess)
        FOR c IN SELECT * FROM _budget_chain(p_agent_id, v.created_at) LOOP
            s := _spend_apply(c.budget_id, c.period_start, c.cap_usd, c.slices, NULL, v.cost_usd, 0, false,
                              c.limit_usd, c.alert_thresholds);
        END LOOP;
    END IF;
    RETURN v_ins.ledger_id;
END;
$$;
COMMENT ON FUNCTION sigledger.record_cost(text, uuid, text, text, bigint, bigint, numeric, timestamptz, jsonb) IS
'Appends one LLM call cost to the append-only ledger and returns its id; the same idempotency key again returns
the same id and changes nothing (a key that records another agent or cost: 23505). Amounts are exact to
1e-10 USD (finer: 22003). The key reservation:<id> records the cost of reservation <id> (its agent only, else
23505; unknown: P0002): an open reservation is settled with it, one whose hold expired or was released is
charged it; check:... keys are refused (22023). cost_usd NULL: computed from the dated price table (22023 if the model has no
price). A client cost that disagrees with the price table is charged as given; the priced figure is stored
beside it (view cost_price_disagreement). The agent''s budgets are charged for the period of created_at,
which may be at most 7 days old (the spool-replay window; older: 22023); spending above the cap is recorded
as excess, never refused (the money is already spent).
SQLSTATE: 22004, 22023, 22003, 23505, P0002, SLB03, 55P03';

-- record_costs: the harness's flush. p_batch is a JSON array of objects with the record_cost fields
-- (idempotency_key, agent_id, model, provider, input_tokens, output_tokens, cost_usd, created_at, metadata).
-- Valid rows are inserted, replays counted as duplicates, invalid rows go to cost_quarantine with their
-- SQLSTATE and reason (one bad row never sinks the batch). Validation is set-based (111_record_costs.sql):
-- one statement validates, quarantines and inserts the rows (the ledger's trigger registers their keys);
-- only a batch holding a value that does not even cast (a malformed uuid, number or timestamp) has its casts
-- done row by row, each in a subtransaction of its own. Budgets are charged once per (budget, period) in lock
-- order. The rule: a batch behaves exactly as if its rows were passed to record_cost one after another, in
-- order, each refusal quarantined with record_cost's SQLSTATE and message instead of raised (111_record_costs.sql
-- says what that means for duplicates and JSON nulls; tests/sql/ledger_batch_sequential.sql checks it).
-- Lock order (the global one): the application keys (in key order, by the set-based statement), then, when
-- the batch holds reservation keys, the reservation rows in id order and every budget_spend row it changes,
-- then the changes; so two batches, or a batch and any single call, never wait for each other in a cycle
-- (isolation specs ledger_batch_key_race, ledger_batch_lock_order).
CREATE OR REPLACE FUNCTION sigledger.record_costs(p_batch jsonb)
RETURNS TABLE (inserted integer, duplicates integer, quarantined integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    r record;
    x record;
    s record;
    c record;
    v_n integer;
    v_state text;
    v_msg text;
    v_batch jsonb := p_batch;
    v_sent jsonb;
    v_bad integer;
    v_races integer := 0;
BEGIN
    IF p_batch IS NULL OR jsonb_typeof(p_batch) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('batch must be a JSON array, got %s', coalesce(jsonb_typeof(p_batch), 'NULL'));
    END IF;
    IF jsonb_array_length(p_batch) > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('batch must hold at most 10000 rows, got %s', jsonb_array_length(p_batch));
    END IF;
    -- one subtransaction per attempt. A value that does not cast rolls it back: the rows are cast one by one
    -- (the malformed ones quarantined) and the rest tried again. A key that a concurrent batch committed after
    -- the attempt's snapshot was taken rolls it back too (23505 from the ledger's key registry, after waiting
    -- for that batch): the next attempt's snapshot sees the key, a replay or a conflict like any stored key.
    -- Only a key committed during each of 5 attempts gives up (40001, nothing written).
    LOOP
        BEGIN
            r := _record_costs_set(v_batch, v_sent);
            EXIT;
        EXCEPTION
            WHEN data_exception THEN
                IF v_bad IS NOT NULL THEN
                    RAISE;  -- (the cast rows always cast)
                END IF;
                c := _record_costs_cast(p_batch);
                v_batch := c.clean;
                v_sent := c.sent;
                v_bad := c.bad;
            WHEN unique_violation THEN
                v_races := v_races + 1;
                IF v_races >= 5 THEN
                    RAISE EXCEPTION USING ERRCODE = '40001',
                        MESSAGE = format('record_costs gave up after %s attempts: keys of the batch kept being recorded by concurrent batches', v_races),
                        HINT = 'Retry the transaction.';
                END IF;
        END;
    END LOOP;
    inserted := r.inserted; duplicates := r.duplicates; quarantined := r.quarantined + coalesce(v_bad, 0);
    IF r.reserved IS NOT NULL THEN
        -- costs recorded under a reservation's key (rare: a settle the harness could not run), each through
        -- the reservation as record_cost does. Lock order, the global one (as settle_budgets): the application
        -- keys were taken above; now the reservation rows in id order, then every budget_spend row this call
        -- changes (the reservations' levels and the charges of the rows above), created when missing, in the
        -- global order (level, budget id, period, slice), all before any is changed. The settlements and the
        -- charges below then wait for no row: this batch never holds a spend row while it waits for an
        -- earlier one (issue 13's review: settling first held one agent's row while the charges waited).
        PERFORM 1 FROM budget_reservation br
         WHERE br.id IN (SELECT (e ->> 'reservation_id')::bigint FROM jsonb_array_elements(r.reserved) e)
         ORDER BY br.id FOR UPDATE;
        -- A budget's missing periods are all created before any of its rows is locked: creating one takes the
        -- budget row FOR SHARE (_spend_ensure, 101), which comes before the budget's spend rows in that order.
        FOR x IN
            SELECT u.bid, array_agg(DISTINCT u.ps ORDER BY u.ps) AS pss, max(u.cap) AS cap, max(u.ns) AS ns
              FROM (SELECT p.bid, p.ps, b.limit_usd * (1 + b.grace_ratio) AS cap, b.slices AS ns,
                           CASE b.level WHEN 'org' THEN 0 WHEN 'team' THEN 1 ELSE 2 END AS rank
                      FROM budget_reservation br
                     CROSS JOIN LATERAL unnest(br.budget_ids, br.period_starts) AS p(bid, ps)
                      JOIN budget b ON b.id = p.bid
                     WHERE br.id IN (SELECT (e ->> 'reservation_id')::bigint FROM jsonb_array_elements(r.reserved) e)
                       AND br.state <> 'settled'
                    UNION ALL
                    SELECT ch.bid, ch.ps, ch.cap, ch.ns, CASE b.level WHEN 'org' THEN 0 WHEN 'team' THEN 1 ELSE 2 END
                      FROM unnest(r.charge_budget_ids, r.charge_periods, r.charge_caps, r.charge_slices)
                           AS ch(bid, ps, cap, ns)
                      JOIN budget b ON b.id = ch.bid) u
             GROUP BY u.rank, u.bid
             ORDER BY u.rank, u.bid
        LOOP
            FOR i IN 1 .. cardinality(x.pss) LOOP
                v_n := _spend_ensure(x.bid, x.pss[i], coalesce(x.cap, 0), x.ns);
            END LOOP;
            FOR i IN 1 .. cardinality(x.pss) LOOP
                PERFORM 1 FROM budget_spend sp WHERE sp.budget_id = x.bid AND sp.period_start = x.pss[i]
                 ORDER BY sp.slice FOR UPDATE;
            END LOOP;
        END LOOP;
        -- in batch order; what record_cost would refuse (unknown reservation: P0002, another agent or a key
        -- taken by an older row: 23505, another amount than the settled one: SLB03) is quarantined with its
        -- SQLSTATE and message (a subtransaction per row: the locks above stay with the batch)
        FOR x IN SELECT * FROM jsonb_to_recordset(r.reserved)
                           AS j(elem jsonb, reservation_id bigint, agent_id uuid, cost_usd numeric, cost_given numeric,
                                priced_usd numeric, cost_source text, input_tokens bigint, output_tokens bigint,
                                model text, provider text, metadata jsonb, created_at timestamptz)
        LOOP
            BEGIN
                s := _reservation_settle(x.reservation_id, 'record', x.agent_id, x.cost_usd, x.cost_given,
                                         x.priced_usd, x.cost_source, x.input_tokens, x.output_tokens, x.model,
                                         x.provider, x.metadata, x.created_at);
                -- (a settle that adopts a row written before the key space was reserved writes no ledger row;
                -- one it wrote has this row's created_at: named by it too, the row is read in its partition
                -- only, not looked for month by month: tests/core/test_index_plans.py)
                IF NOT s.replayed AND EXISTS (SELECT 1 FROM llm_cost_log l
                                               WHERE l.id = s.ledger_id AND l.created_at = x.created_at
                                                 AND l.reservation_id = x.reservation_id) THEN
                    inserted := inserted + 1;
                ELSE
                    duplicates := duplicates + 1;
                END IF;
            EXCEPTION WHEN unique_violation OR no_data_found OR SQLSTATE 'SLB03' THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
                INSERT INTO cost_quarantine (idempotency_key, payload, sqlstate, reason, replay_key)
                VALUES ('reservation:' || x.reservation_id, x.elem, v_state, v_msg,
                        _quarantine_replay_key('reservation:' || x.reservation_id, x.elem))
                ON CONFLICT (replay_key) DO NOTHING;
                quarantined := quarantined + 1;
            END;
        END LOOP;
    END IF;
    -- one charge per (budget, period), in the global lock order (level, budget id, period)
    PERFORM _record_costs_charge(r.charge_budget_ids, r.charge_periods, r.charge_amounts, r.charge_caps,
                                 r.charge_limits, r.charge_thresholds, r.charge_slices);
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION sigledger.record_costs(jsonb) IS
'Records a batch (JSON array of at most 10000 record_cost objects) in one transaction, exactly as if its rows
were passed to record_cost one after another in order, except that what record_cost would refuse is
quarantined in cost_quarantine with record_cost''s SQLSTATE and message instead of raised: valid rows are
inserted, replays (a key already recorded, by the ledger or by an earlier row of the batch, with the same
agent and, when given, the same cost) counted as duplicates, and every invalid row (a bad or malformed value,
created_at more than 7 days old, a key that records another cost: 23505, a reservation key that does not fit
its reservation or whose ledger key holds an older row: P0002, 23505, SLB03) quarantined; the others go in.
A refused row with a key is quarantined once (cost_quarantine.replay_key): the batch sent again, or the same row
twice in a batch, counts it again but adds no quarantine row.
An absent field takes record_cost''s default, a JSON null is its NULL. Returns (inserted, duplicates,
quarantined). Budgets are charged once per budget and period, in lock order. A batch sharing keys with a
concurrent one waits for it at the first shared key, then compares with what it committed; 40001 (nothing
written) when its keys keep being recorded by concurrent batches. It raises no 23505 (conflicts are
quarantined) and, called in its own transaction, no 40P01 against other sigledger calls (it takes its locks
in the global order). Its work grows linearly with the batch, a replay''s too, so even the largest batch stays far
below an app login''s statement_timeout (30 s); a call cancelled past it (57014, as any call: docs/errors.md,
Server trouble) writes nothing.
SQLSTATE: 22023, 55P03, 40001';

-- add_model_price: adds a dated price; prices are never edited, a new valid_from supersedes.
CREATE OR REPLACE FUNCTION sigledger.add_model_price(
    p_provider text, p_model text, p_input_usd_per_mtok numeric, p_output_usd_per_mtok numeric,
    p_valid_from timestamptz DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_from timestamptz := coalesce(p_valid_from, now());
BEGIN
    p_provider := _assert_text('provider', p_provider);
    p_model := _assert_text('model', p_model);
    PERFORM _assert_exact('input_usd_per_mtok', _assert_usd('input_usd_per_mtok', p_input_usd_per_mtok, 100000), 9);
    PERFORM _assert_exact('output_usd_per_mtok', _assert_usd('output_usd_per_mtok', p_output_usd_per_mtok, 100000), 9);
    IF v_from < timestamptz '2000-01-01 00:00:00+00' OR v_from >= timestamptz '2200-01-01 00:00:00+00' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('valid_from must lie in [2000, 2200), got %s', v_from);
    END IF;
    INSERT INTO model_price (provider, model, valid_from, input_usd_per_mtok, output_usd_per_mtok)
    VALUES (p_provider, p_model, v_from, p_input_usd_per_mtok, p_output_usd_per_mtok);
    RETURN v_from;
END;
$$;
COMMENT ON FUNCTION sigledger.add_model_price(text, text, numeric, numeric, timestamptz) IS
'Adds a price (USD per million input/output tokens) valid from valid_from (default now). A price applies to calls
made at or after valid_from until a later price.
SQLSTATE: 22004, 22023, 22003, 23505';

-- cost_trends: per-day (UTC) totals of the last p_days days, today included, zero days included.
CREATE OR REPLACE FUNCTION sigledger.cost_trends(p_days integer)
RETURNS TABLE (day date, total_usd numeric, calls bigint, input_tokens numeric, output_tokens numeric)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
-- p_days is an integer parameter used as a value, never interpolated into SQL (the seed's injection came
-- from building the interval from text).
DECLARE
    v_today date := (now() AT TIME ZONE 'UTC')::date;
BEGIN
    IF p_days IS NULL OR p_days < 1 OR p_days > 365 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('days must be between 1 and 365, got %s', coalesce(p_days::text, 'NULL'));
    END IF;
    RETURN QUERY
    SELECT d.day, coalesce(sum(l.cost_usd), 0), count(l.id),
           coalesce(sum(l.tokens_input), 0)::numeric, coalesce(sum(l.tokens_output), 0)::numeric
      FROM (SELECT v_today - g.n AS day FROM generate_series(0, p_days - 1) AS g(n)) d
      LEFT JOIN llm_cost_log l
        ON l.created_at >= (d.day::timestamp AT TIME ZONE 'UTC')
       AND l.created_at < ((d.day + 1)::timestamp AT TIME ZONE 'UTC')
     GROUP BY d.day
     ORDER BY d.day;
END;
$$;
COMMENT ON FUNCTION sigledger.cost_trends(integer) IS
'Per-day (UTC) cost totals for the last days days (1..365), today included, days without costs as zero.
SQLSTATE: 22023';
