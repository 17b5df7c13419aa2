-- sigledger:before V4_003
-- Ledger rows the V3_000 schema accepted and V4_001's constraints refuse (V4_003 validates them): more than
-- 1e12 tokens (llm_cost_log_tokens_range) or created more than a day in the future
-- (llm_cost_log_created_at_range: a client clock far ahead). No rule can make such a row right, so each is
-- moved, whole, to sigledger_meta.quarantine with the constraint it breaks, and leaves the ledger. The
-- append-only trigger is switched off for that move only, inside this transaction (nothing else can write
-- the ledger meanwhile: DISABLE TRIGGER holds SHARE ROW EXCLUSIVE until commit). reconcile_budgets then shows
-- the agent's seed-era spend above its ledger by those rows' cost; the quarantine names them.
-- Runs before V4_003 whenever V4_003 is about to run; finds nothing the second time.
DO $repair$
DECLARE
    v_rows bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM sigledger.llm_cost_log l
                    WHERE l.tokens_input > 1000000000000 OR l.tokens_output > 1000000000000
                       OR l.created_at > now() + interval '1 day') THEN
        RETURN;
    END IF;
    ALTER TABLE sigledger.llm_cost_log DISABLE TRIGGER llm_cost_log_append_only_row;
    WITH moved AS (
        DELETE FROM sigledger.llm_cost_log l
         WHERE l.tokens_input > 1000000000000 OR l.tokens_output > 1000000000000
            OR l.created_at > now() + interval '1 day'
        RETURNING l.*
    )
    INSERT INTO sigledger_meta.quarantine (source_table, rule, reason, row_data)
    SELECT 'sigledger.llm_cost_log', 'R001__ledger_out_of_range',
           CASE WHEN m.tokens_input > 1000000000000 OR m.tokens_output > 1000000000000
                THEN format('llm_cost_log_tokens_range: %s input / %s output tokens (at most 1e12 each)',
                            m.tokens_input, m.tokens_output)
                ELSE format('llm_cost_log_created_at_range: created_at %s is more than a day ahead of %s',
                            m.created_at, now())
           END,
           to_jsonb(m)
      FROM moved m;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    ALTER TABLE sigledger.llm_cost_log ENABLE TRIGGER llm_cost_log_append_only_row;
    INSERT INTO sigledger_meta.repair_history (repair, before_version, rule, action, rows, detail)
    VALUES ('R001__ledger_out_of_range.sql', coalesce(current_setting('sigledger.repair_before', true), '?'),
            'ledger rows out of range', 'quarantined', v_rows,
            'moved to sigledger_meta.quarantine; reconcile_budgets shows their cost as drift');
END
$repair$;
