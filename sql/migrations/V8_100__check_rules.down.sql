-- sigledger:no-transaction
-- Rolls back V8_100: the former CHECK constraints, one per rule, as V4_002, V8_080 and V8_081 left them; each
-- table's set added NOT VALID (catalog only), then validated (a scan under SHARE UPDATE EXCLUSIVE) when the
-- one-CHECK form was; then the one-CHECK constraints and their functions are dropped.
ALTER TABLE sigledger.llm_cost_log
    ADD CONSTRAINT llm_cost_log_charged_at_range
        CHECK (charged_at > '2020-01-01 00:00:00+00' AND charged_at <= now() + interval '1 day') NOT VALID,
    ADD CONSTRAINT llm_cost_log_cost_source_valid CHECK (cost_source IN ('client', 'price_table')) NOT VALID,
    ADD CONSTRAINT llm_cost_log_cost_usd_range
        CHECK (cost_usd <> 'NaN' AND cost_usd >= 0 AND cost_usd <= 1000000 AND cost_usd = round(cost_usd, 10)) NOT VALID,
    ADD CONSTRAINT llm_cost_log_created_at_range CHECK (created_at <= now() + interval '1 day') NOT VALID,
    ADD CONSTRAINT llm_cost_log_created_at_sane
        CHECK (created_at > '2020-01-01 00:00:00+00' AND created_at < 'infinity') NOT VALID,
    ADD CONSTRAINT llm_cost_log_idempotency_key_length CHECK (length(btrim(idempotency_key)) BETWEEN 1 AND 200) NOT VALID,
    ADD CONSTRAINT llm_cost_log_metadata_object CHECK (jsonb_typeof(metadata) = 'object') NOT VALID,
    ADD CONSTRAINT llm_cost_log_model_length CHECK (length(btrim(model)) BETWEEN 1 AND 200) NOT VALID,
    ADD CONSTRAINT llm_cost_log_priced_usd_range
        CHECK (priced_usd IS NULL OR (priced_usd <> 'NaN' AND priced_usd >= 0 AND priced_usd <= 100000000
                                      AND priced_usd = round(priced_usd, 10))) NOT VALID,
    ADD CONSTRAINT llm_cost_log_provider_length CHECK (length(btrim(provider)) BETWEEN 1 AND 200) NOT VALID,
    ADD CONSTRAINT llm_cost_log_tokens_nonnegative CHECK (tokens_input >= 0 AND tokens_output >= 0) NOT VALID,
    ADD CONSTRAINT llm_cost_log_tokens_range
        CHECK (tokens_input <= 1000000000000 AND tokens_output <= 1000000000000) NOT VALID;
ALTER TABLE sigledger.budget_spend
    ADD CONSTRAINT budget_spend_cap_usd_range CHECK (cap_usd <> 'NaN' AND cap_usd >= 0) NOT VALID,
    ADD CONSTRAINT budget_spend_excess_usd_range CHECK (excess_usd <> 'NaN' AND excess_usd >= 0) NOT VALID,
    ADD CONSTRAINT budget_spend_frozen_usd_range
        CHECK (frozen_usd IS NULL OR (frozen_usd <> 'NaN' AND frozen_usd >= 0)) NOT VALID,
    ADD CONSTRAINT budget_spend_reserved_usd_range CHECK (reserved_usd <> 'NaN' AND reserved_usd >= 0) NOT VALID,
    ADD CONSTRAINT budget_spend_slice_range CHECK (slice BETWEEN 0 AND 63) NOT VALID,
    ADD CONSTRAINT budget_spend_spent_usd_range CHECK (spent_usd <> 'NaN' AND spent_usd >= 0) NOT VALID,
    ADD CONSTRAINT budget_spend_within_cap CHECK (spent_usd + reserved_usd <= cap_usd + excess_usd) NOT VALID;
ALTER TABLE sigledger.budget_reservation
    ADD CONSTRAINT budget_reservation_actual_usd_range
        CHECK (actual_usd IS NULL OR (actual_usd <> 'NaN' AND actual_usd >= 0 AND actual_usd <= 1000000)) NOT VALID,
    ADD CONSTRAINT budget_reservation_closed_at_state CHECK ((state = 'open') = (closed_at IS NULL)) NOT VALID,
    ADD CONSTRAINT budget_reservation_estimate_usd_range
        CHECK (estimate_usd <> 'NaN' AND estimate_usd >= 0 AND estimate_usd <= 1000000) NOT VALID,
    ADD CONSTRAINT budget_reservation_expires_at_after_created CHECK (expires_at > created_at) NOT VALID,
    ADD CONSTRAINT budget_reservation_idempotency_key_not_empty
        CHECK (length(btrim(idempotency_key)) BETWEEN 1 AND 200) NOT VALID,
    ADD CONSTRAINT budget_reservation_levels_match
        CHECK (cardinality(budget_ids) BETWEEN 1 AND 3 AND cardinality(budget_ids) = cardinality(period_starts)) NOT VALID,
    ADD CONSTRAINT budget_reservation_settled_fields
        CHECK ((state = 'settled') = (ledger_id IS NOT NULL AND actual_usd IS NOT NULL AND overrun_usd IS NOT NULL)) NOT VALID,
    ADD CONSTRAINT budget_reservation_slices_match
        CHECK (slices IS NULL OR cardinality(slices) = cardinality(budget_ids)) NOT VALID,
    ADD CONSTRAINT budget_reservation_state_valid
        CHECK (state IN ('open', 'settled', 'released', 'expired')) NOT VALID;
DO $$
DECLARE
    v record;
BEGIN
    FOR v IN
        SELECT t.name, c.conname
          FROM unnest(ARRAY['llm_cost_log', 'budget_spend', 'budget_reservation']) AS t (name)
          JOIN pg_constraint c ON c.conrelid = format('sigledger.%I', t.name)::regclass AND c.contype = 'c'
                              AND NOT c.convalidated AND c.conname <> t.name || '_rules'
         WHERE EXISTS (SELECT FROM pg_constraint r
                        WHERE r.conrelid = format('sigledger.%I', t.name)::regclass
                          AND r.conname = t.name || '_rules' AND r.convalidated)
    LOOP
        EXECUTE format('ALTER TABLE sigledger.%I VALIDATE CONSTRAINT %I', v.name, v.conname);
    END LOOP;
END;
$$;
ALTER TABLE sigledger.llm_cost_log DROP CONSTRAINT llm_cost_log_rules;
ALTER TABLE sigledger.budget_spend DROP CONSTRAINT budget_spend_rules;
ALTER TABLE sigledger.budget_reservation DROP CONSTRAINT budget_reservation_rules;
DROP FUNCTION sigledger._llm_cost_log_rules(oid, text, text, text, bigint, bigint, numeric, jsonb, timestamptz, numeric,
                                            text, timestamptz);
DROP FUNCTION sigledger._budget_spend_rules(numeric, numeric, numeric, numeric, smallint, numeric);
DROP FUNCTION sigledger._budget_reservation_rules(text, numeric, bigint[], timestamptz[], text, timestamptz,
                                                  timestamptz, timestamptz, numeric, numeric, bigint, smallint[]);
