-- sigledger:no-transaction
-- V8_100: the CHECK rules of the three tables every budget call writes (llm_cost_log, budget_spend,
-- budget_reservation), each table's rules in one CHECK that calls a PL/pgSQL function (issue 13).
--
-- Why: PostgreSQL 15 re-compiles every CHECK of a table for every statement that writes it (ExecRelCheck:
-- stringToNode + ExecPrepareExpr of each constraint's stored expression, kept only for the statement). The
-- ledger's 12 CHECKs are ~15k characters of node text, a reservation's 9 ~11k, a spend row's 7 ~7k: measured
-- on one backend (CPU from /proc/<pid>/schedstat), that compilation was a third of the CPU of
-- check_and_record_budget and of reserve+settle on many agents. A PL/pgSQL function is compiled once per
-- backend; the one CHECK that calls it is a single function call to re-compile. Per row, it evaluates the
-- same expressions as before (one CASE, no statement): a 1,000-row insert costs about the same as before.
--
-- The rules and the error contract are unchanged: each WHEN below is a former constraint's expression with
-- the function's parameter in place of the column (the former definitions are kept verbatim in
-- tests/sql/check_rules.sql, which compares both on every edge value). A broken rule raises 23514
-- check_violation with the former constraint's name as the error's constraint name (psycopg's
-- diag.constraint_name, sigledger.core.errors' .constraint), the table and schema, the same message
-- ('new row for relation "<table>" violates check constraint "<name>"', a ledger row's partition as the table:
-- the CHECK passes tableoid) and a DETAIL with the failing value. When a row breaks several rules, the first one by name
-- is reported, as PostgreSQL does (it checks a table's CHECKs in name order). A rule is satisfied unless its
-- expression is false (NULL passes), as in a CHECK.
--
-- Online, on whatever the previous schema accepted: every statement below runs on its own. The functions are
-- created; each table gets its new CHECK NOT VALID (ACCESS EXCLUSIVE for the catalog change only; new rows
-- are checked at once, by both the old constraints and the new one until the old ones are dropped). The new
-- CHECK is then VALIDATEd (a scan under SHARE UPDATE EXCLUSIVE: writes go through) only when every rule it
-- replaces was validated on the table and every partition, which is always so on a database this runner
-- migrated (V4_003, V8_080 and V8_081 validated them); otherwise it stays NOT VALID, as the rule that was
-- not validated was, and no old row can make this migration fail. Last, the old constraints are dropped
-- (catalog only). The previous release's functions work throughout (they never name these constraints).
-- The functions are defined here, not in a repeatable file: a CHECK's meaning must not change without a
-- migration (as V8_020's _text_canon).

CREATE FUNCTION sigledger._llm_cost_log_rules(
    p_table oid, p_idempotency_key text, p_model text, p_provider text, p_tokens_input bigint, p_tokens_output bigint,
    p_cost_usd numeric, p_metadata jsonb, p_created_at timestamptz, p_priced_usd numeric, p_cost_source text,
    p_charged_at timestamptz
) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_rule text;
    v_table text;
BEGIN
    -- the first rule broken, in constraint-name order
    v_rule := CASE
        WHEN (p_charged_at > timestamptz '2020-01-01 00:00:00+00' AND p_charged_at <= now() + interval '1 day') IS FALSE
            THEN 'llm_cost_log_charged_at_range'
        WHEN (p_cost_source = ANY (ARRAY['client', 'price_table'])) IS FALSE
            THEN 'llm_cost_log_cost_source_valid'
        WHEN (p_cost_usd <> 'NaN' AND p_cost_usd >= 0 AND p_cost_usd <= 1000000
              AND p_cost_usd = round(p_cost_usd, 10)) IS FALSE
            THEN 'llm_cost_log_cost_usd_range'
        WHEN (p_created_at <= now() + interval '1 day') IS FALSE
            THEN 'llm_cost_log_created_at_range'
        WHEN (p_created_at > timestamptz '2020-01-01 00:00:00+00' AND p_created_at < timestamptz 'infinity') IS FALSE
            THEN 'llm_cost_log_created_at_sane'
        WHEN (length(btrim(p_idempotency_key)) >= 1 AND length(btrim(p_idempotency_key)) <= 200) IS FALSE
            THEN 'llm_cost_log_idempotency_key_length'
        WHEN (jsonb_typeof(p_metadata) = 'object') IS FALSE
            THEN 'llm_cost_log_metadata_object'
        WHEN (length(btrim(p_model)) >= 1 AND length(btrim(p_model)) <= 200) IS FALSE
            THEN 'llm_cost_log_model_length'
        WHEN (p_priced_usd IS NULL OR (p_priced_usd <> 'NaN' AND p_priced_usd >= 0 AND p_priced_usd <= 100000000
                                       AND p_priced_usd = round(p_priced_usd, 10))) IS FALSE
            THEN 'llm_cost_log_priced_usd_range'
        WHEN (length(btrim(p_provider)) >= 1 AND length(btrim(p_provider)) <= 200) IS FALSE
            THEN 'llm_cost_log_provider_length'
        WHEN (p_tokens_input >= 0 AND p_tokens_output >= 0) IS FALSE
            THEN 'llm_cost_log_tokens_nonnegative'
        WHEN (p_tokens_input <= 1000000000000 AND p_tokens_output <= 1000000000000) IS FALSE
            THEN 'llm_cost_log_tokens_range'
    END;
    IF v_rule IS NULL THEN
        RETURN true;
    END IF;
    -- the partition the row went to, as PostgreSQL names it
    v_table := coalesce((SELECT c.relname FROM pg_class c WHERE c.oid = p_table), 'llm_cost_log');
    RAISE EXCEPTION USING ERRCODE = '23514', CONSTRAINT = v_rule, TABLE = v_table, SCHEMA = 'sigledger',
        MESSAGE = format('new row for relation "%s" violates check constraint "%s"', v_table, v_rule),
        DETAIL = left(format('Failing value: %s', CASE v_rule
            WHEN 'llm_cost_log_charged_at_range' THEN format('charged_at = %s', p_charged_at)
            WHEN 'llm_cost_log_cost_source_valid' THEN format('cost_source = %s', p_cost_source)
            WHEN 'llm_cost_log_cost_usd_range' THEN format('cost_usd = %s', p_cost_usd)
            WHEN 'llm_cost_log_created_at_range' THEN format('created_at = %s', p_created_at)
            WHEN 'llm_cost_log_created_at_sane' THEN format('created_at = %s', p_created_at)
            WHEN 'llm_cost_log_idempotency_key_length' THEN format('idempotency_key = %s', p_idempotency_key)
            WHEN 'llm_cost_log_metadata_object' THEN format('metadata = %s', p_metadata)
            WHEN 'llm_cost_log_model_length' THEN format('model = %s', p_model)
            WHEN 'llm_cost_log_priced_usd_range' THEN format('priced_usd = %s', p_priced_usd)
            WHEN 'llm_cost_log_provider_length' THEN format('provider = %s', p_provider)
            ELSE format('tokens_input = %s, tokens_output = %s', p_tokens_input, p_tokens_output)
        END), 240);
END;
$$;
COMMENT ON FUNCTION sigledger._llm_cost_log_rules(oid, text, text, text, bigint, bigint, numeric, jsonb, timestamptz,
                                                  numeric, text, timestamptz) IS
    'Internal: the CHECK rules of llm_cost_log (constraint llm_cost_log_rules, V8_100); raises 23514 naming the rule.';

CREATE FUNCTION sigledger._budget_spend_rules(
    p_cap_usd numeric, p_spent_usd numeric, p_reserved_usd numeric, p_excess_usd numeric, p_slice smallint,
    p_frozen_usd numeric
) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_rule text;
BEGIN
    -- the first rule broken, in constraint-name order
    v_rule := CASE
        WHEN (p_cap_usd <> 'NaN' AND p_cap_usd >= 0) IS FALSE THEN 'budget_spend_cap_usd_range'
        WHEN (p_excess_usd <> 'NaN' AND p_excess_usd >= 0) IS FALSE THEN 'budget_spend_excess_usd_range'
        WHEN (p_frozen_usd IS NULL OR (p_frozen_usd <> 'NaN' AND p_frozen_usd >= 0)) IS FALSE
            THEN 'budget_spend_frozen_usd_range'
        WHEN (p_reserved_usd <> 'NaN' AND p_reserved_usd >= 0) IS FALSE THEN 'budget_spend_reserved_usd_range'
        WHEN (p_slice >= 0 AND p_slice <= 63) IS FALSE THEN 'budget_spend_slice_range'
        WHEN (p_spent_usd <> 'NaN' AND p_spent_usd >= 0) IS FALSE THEN 'budget_spend_spent_usd_range'
        WHEN (p_spent_usd + p_reserved_usd <= p_cap_usd + p_excess_usd) IS FALSE THEN 'budget_spend_within_cap'
    END;
    IF v_rule IS NULL THEN
        RETURN true;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '23514', CONSTRAINT = v_rule, TABLE = 'budget_spend', SCHEMA = 'sigledger',
        MESSAGE = format('new row for relation "budget_spend" violates check constraint "%s"', v_rule),
        DETAIL = format('Failing value: %s', CASE v_rule
            WHEN 'budget_spend_cap_usd_range' THEN format('cap_usd = %s', p_cap_usd)
            WHEN 'budget_spend_excess_usd_range' THEN format('excess_usd = %s', p_excess_usd)
            WHEN 'budget_spend_frozen_usd_range' THEN format('frozen_usd = %s', p_frozen_usd)
            WHEN 'budget_spend_reserved_usd_range' THEN format('reserved_usd = %s', p_reserved_usd)
            WHEN 'budget_spend_slice_range' THEN format('slice = %s', p_slice)
            WHEN 'budget_spend_spent_usd_range' THEN format('spent_usd = %s', p_spent_usd)
            ELSE format('spent_usd + reserved_usd = %s > cap_usd + excess_usd = %s',
                        p_spent_usd + p_reserved_usd, p_cap_usd + p_excess_usd)
        END);
END;
$$;
COMMENT ON FUNCTION sigledger._budget_spend_rules(numeric, numeric, numeric, numeric, smallint, numeric) IS
    'Internal: the CHECK rules of budget_spend (constraint budget_spend_rules, V8_100); raises 23514 naming the rule.';

CREATE FUNCTION sigledger._budget_reservation_rules(
    p_idempotency_key text, p_estimate_usd numeric, p_budget_ids bigint[], p_period_starts timestamptz[],
    p_state text, p_created_at timestamptz, p_expires_at timestamptz, p_closed_at timestamptz,
    p_actual_usd numeric, p_overrun_usd numeric, p_ledger_id bigint, p_slices smallint[]
) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_rule text;
BEGIN
    -- the first rule broken, in constraint-name order
    v_rule := CASE
        WHEN (p_actual_usd IS NULL OR (p_actual_usd <> 'NaN' AND p_actual_usd >= 0 AND p_actual_usd <= 1000000)) IS FALSE
            THEN 'budget_reservation_actual_usd_range'
        WHEN ((p_state = 'open') = (p_closed_at IS NULL)) IS FALSE
            THEN 'budget_reservation_closed_at_state'
        WHEN (p_estimate_usd <> 'NaN' AND p_estimate_usd >= 0 AND p_estimate_usd <= 1000000) IS FALSE
            THEN 'budget_reservation_estimate_usd_range'
        WHEN (p_expires_at > p_created_at) IS FALSE
            THEN 'budget_reservation_expires_at_after_created'
        WHEN (length(btrim(p_idempotency_key)) >= 1 AND length(btrim(p_idempotency_key)) <= 200) IS FALSE
            THEN 'budget_reservation_idempotency_key_not_empty'
        WHEN (cardinality(p_budget_ids) >= 1 AND cardinality(p_budget_ids) <= 3
              AND cardinality(p_budget_ids) = cardinality(p_period_starts)) IS FALSE
            THEN 'budget_reservation_levels_match'
        WHEN ((p_state = 'settled') = (p_ledger_id IS NOT NULL AND p_actual_usd IS NOT NULL
                                       AND p_overrun_usd IS NOT NULL)) IS FALSE
            THEN 'budget_reservation_settled_fields'
        WHEN (p_slices IS NULL OR cardinality(p_slices) = cardinality(p_budget_ids)) IS FALSE
            THEN 'budget_reservation_slices_match'
        WHEN (p_state = ANY (ARRAY['open', 'settled', 'released', 'expired'])) IS FALSE
            THEN 'budget_reservation_state_valid'
    END;
    IF v_rule IS NULL THEN
        RETURN true;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '23514', CONSTRAINT = v_rule, TABLE = 'budget_reservation',
        SCHEMA = 'sigledger',
        MESSAGE = format('new row for relation "budget_reservation" violates check constraint "%s"', v_rule),
        DETAIL = left(format('Failing value: %s', CASE v_rule
            WHEN 'budget_reservation_actual_usd_range' THEN format('actual_usd = %s', p_actual_usd)
            WHEN 'budget_reservation_closed_at_state' THEN format('state = %s, closed_at = %s', p_state, p_closed_at)
            WHEN 'budget_reservation_estimate_usd_range' THEN format('estimate_usd = %s', p_estimate_usd)
            WHEN 'budget_reservation_expires_at_after_created'
                THEN format('created_at = %s, expires_at = %s', p_created_at, p_expires_at)
            WHEN 'budget_reservation_idempotency_key_not_empty' THEN format('idempotency_key = %s', p_idempotency_key)
            WHEN 'budget_reservation_levels_match'
                THEN format('budget_ids = %s, period_starts = %s', p_budget_ids, p_period_starts)
            WHEN 'budget_reservation_settled_fields'
                THEN format('state = %s, ledger_id = %s, actual_usd = %s, overrun_usd = %s', p_state, p_ledger_id,
                            p_actual_usd, p_overrun_usd)
            WHEN 'budget_reservation_slices_match' THEN format('slices = %s, budget_ids = %s', p_slices, p_budget_ids)
            ELSE format('state = %s', p_state)
        END), 240);
END;
$$;
COMMENT ON FUNCTION sigledger._budget_reservation_rules(text, numeric, bigint[], timestamptz[], text, timestamptz,
                                                        timestamptz, timestamptz, numeric, numeric, bigint,
                                                        smallint[]) IS
    'Internal: the CHECK rules of budget_reservation (constraint budget_reservation_rules, V8_100); raises 23514 naming the rule.';

ALTER TABLE sigledger.llm_cost_log ADD CONSTRAINT llm_cost_log_rules
    CHECK (sigledger._llm_cost_log_rules(tableoid, idempotency_key, model, provider, tokens_input, tokens_output,
                                         cost_usd, metadata, created_at, priced_usd, cost_source, charged_at)) NOT VALID;
ALTER TABLE sigledger.budget_spend ADD CONSTRAINT budget_spend_rules
    CHECK (sigledger._budget_spend_rules(cap_usd, spent_usd, reserved_usd, excess_usd, slice, frozen_usd)) NOT VALID;
ALTER TABLE sigledger.budget_reservation ADD CONSTRAINT budget_reservation_rules
    CHECK (sigledger._budget_reservation_rules(idempotency_key, estimate_usd, budget_ids, period_starts, state,
                                               created_at, expires_at, closed_at, actual_usd, overrun_usd, ledger_id,
                                               slices)) NOT VALID;

-- validated (scans; SHARE UPDATE EXCLUSIVE) when every rule it replaces was, on the table and its partitions
DO $$
DECLARE
    v_table text;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['llm_cost_log', 'budget_spend', 'budget_reservation'] LOOP
        IF NOT EXISTS (
            SELECT FROM pg_constraint c
             WHERE c.contype = 'c' AND NOT c.convalidated AND c.conname LIKE v_table || '\_%'
               AND c.conname NOT IN (v_table || '_rules', 'llm_cost_log_legacy_range')
               AND (c.conrelid = format('sigledger.%I', v_table)::regclass
                    OR c.conrelid IN (SELECT i.inhrelid FROM pg_inherits i
                                       WHERE i.inhparent = format('sigledger.%I', v_table)::regclass))
        ) THEN
            EXECUTE format('ALTER TABLE sigledger.%I VALIDATE CONSTRAINT %I', v_table, v_table || '_rules');
        END IF;
    END LOOP;
END;
$$;

-- the former constraints (a partition's inherited copies go with the parent's): every rule is kept by the
-- one-CHECK constraint above, which has been checking new rows since it was added (in DO blocks: one
-- statement per table, without a squawk ban-drop-constraint exception on every line)
DO $$
BEGIN
    ALTER TABLE sigledger.llm_cost_log
        DROP CONSTRAINT llm_cost_log_charged_at_range,
        DROP CONSTRAINT llm_cost_log_cost_source_valid,
        DROP CONSTRAINT llm_cost_log_cost_usd_range,
        DROP CONSTRAINT llm_cost_log_created_at_range,
        DROP CONSTRAINT llm_cost_log_created_at_sane,
        DROP CONSTRAINT llm_cost_log_idempotency_key_length,
        DROP CONSTRAINT llm_cost_log_metadata_object,
        DROP CONSTRAINT llm_cost_log_model_length,
        DROP CONSTRAINT llm_cost_log_priced_usd_range,
        DROP CONSTRAINT llm_cost_log_provider_length,
        DROP CONSTRAINT llm_cost_log_tokens_nonnegative,
        DROP CONSTRAINT llm_cost_log_tokens_range;
END;
$$;
DO $$
BEGIN
    ALTER TABLE sigledger.budget_spend
        DROP CONSTRAINT budget_spend_cap_usd_range,
        DROP CONSTRAINT budget_spend_excess_usd_range,
        DROP CONSTRAINT budget_spend_frozen_usd_range,
        DROP CONSTRAINT budget_spend_reserved_usd_range,
        DROP CONSTRAINT budget_spend_slice_range,
        DROP CONSTRAINT budget_spend_spent_usd_range,
        DROP CONSTRAINT budget_spend_within_cap;
END;
$$;
DO $$
BEGIN
    ALTER TABLE sigledger.budget_reservation
        DROP CONSTRAINT budget_reservation_actual_usd_range,
        DROP CONSTRAINT budget_reservation_closed_at_state,
        DROP CONSTRAINT budget_reservation_estimate_usd_range,
        DROP CONSTRAINT budget_reservation_expires_at_after_created,
        DROP CONSTRAINT budget_reservation_idempotency_key_not_empty,
        DROP CONSTRAINT budget_reservation_levels_match,
        DROP CONSTRAINT budget_reservation_settled_fields,
        DROP CONSTRAINT budget_reservation_slices_match,
        DROP CONSTRAINT budget_reservation_state_valid;
END;
$$;
-- a partition that held a same-named CHECK of its own (conislocal: a table attached as a partition) keeps it
-- after the parent's drop: dropped too (catalog only)
DO $$
DECLARE
    v record;
BEGIN
    FOR v IN
        SELECT c.conrelid::regclass AS rel, c.conname
          FROM pg_constraint c JOIN pg_inherits i ON i.inhrelid = c.conrelid
         WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass AND c.contype = 'c'
           AND c.conname IN ('llm_cost_log_charged_at_range', 'llm_cost_log_cost_source_valid',
                             'llm_cost_log_cost_usd_range', 'llm_cost_log_created_at_range',
                             'llm_cost_log_created_at_sane', 'llm_cost_log_idempotency_key_length',
                             'llm_cost_log_metadata_object', 'llm_cost_log_model_length',
                             'llm_cost_log_priced_usd_range', 'llm_cost_log_provider_length',
                             'llm_cost_log_tokens_nonnegative', 'llm_cost_log_tokens_range')
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', v.rel, v.conname);
    END LOOP;
END;
$$;
