-- Rolls back V8_080: the ledger's money columns back to numeric(14,6) (a rewrite of the ledger; the runner has
-- dropped every view first). Refused while a row holds more than 6 decimal places: it would be rounded.
DO $$
BEGIN
    IF EXISTS (SELECT FROM sigledger.llm_cost_log
                WHERE cost_usd <> round(cost_usd, 6) OR priced_usd <> round(priced_usd, 6)) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'cannot roll back V8_080: ledger rows hold amounts with more than 6 decimal places',
            HINT = 'numeric(14,6) would round them; keep V8_080.';
    END IF;
END;
$$;
ALTER TABLE sigledger.llm_cost_log
    DROP CONSTRAINT llm_cost_log_cost_usd_range,
    DROP CONSTRAINT llm_cost_log_priced_usd_range,
    ALTER COLUMN cost_usd TYPE numeric(14,6),
    ALTER COLUMN priced_usd TYPE numeric(14,6),
    ADD CONSTRAINT llm_cost_log_cost_usd_range CHECK (cost_usd <> 'NaN' AND cost_usd >= 0 AND cost_usd <= 1000000),
    ADD CONSTRAINT llm_cost_log_priced_usd_range
        CHECK (priced_usd IS NULL OR (priced_usd <> 'NaN' AND priced_usd >= 0 AND priced_usd <= 100000000));
COMMENT ON COLUMN sigledger.llm_cost_log.cost_usd IS NULL;
COMMENT ON COLUMN sigledger.llm_cost_log.priced_usd IS
    'Cost computed from model_price at created_at (NULL: no price); see view cost_price_disagreement.';
