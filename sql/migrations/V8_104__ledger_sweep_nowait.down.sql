-- V8_104 down: _ensure_ledger_partitions as V4_004 made it.
CREATE OR REPLACE FUNCTION sigledger._ensure_ledger_partitions(p_months_ahead integer) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
-- creating a partition locks the parent: give way to traffic rather than queue behind a long transaction
SET lock_timeout = '5s'
AS $$
DECLARE
    v_cutoff timestamptz := sigledger._ledger_legacy_cutoff();
    v_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    v_from timestamptz;
    v_to timestamptz;
    v_name text;
    v_count integer := 0;
BEGIN
    IF p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 120 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('months_ahead must be between 0 and 120, got %s', coalesce(p_months_ahead::text, 'NULL'));
    END IF;
    FOR i IN 0 .. p_months_ahead LOOP
        v_from := (v_month + make_interval(months => i)) AT TIME ZONE 'UTC';
        v_to := (v_month + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        v_name := 'llm_cost_log_p' || to_char(v_month + make_interval(months => i), 'YYYYMM');
        CONTINUE WHEN v_from < v_cutoff OR to_regclass('sigledger.' || v_name) IS NOT NULL;
        -- an index probe on the DEFAULT partition (empty when partitions are made ahead)
        IF EXISTS (SELECT 1 FROM sigledger.llm_cost_log_default d WHERE d.created_at >= v_from AND d.created_at < v_to) THEN
            RAISE WARNING USING
                MESSAGE = format('ledger partition %s not created: the DEFAULT partition holds rows of [%s, %s)',
                                 v_name, v_from, v_to),
                HINT = 'See docs/budgets.md, Partitioning: move the rows out of llm_cost_log_default.';
            CONTINUE;
        END IF;
        EXECUTE format('CREATE TABLE sigledger.%I PARTITION OF sigledger.llm_cost_log FOR VALUES FROM (%L) TO (%L)',
                       v_name, v_from, v_to);
        EXECUTE format('ALTER TABLE sigledger.%I ADD CONSTRAINT %I PRIMARY KEY (id)', v_name, v_name || '_pkey');
        EXECUTE format('CREATE TRIGGER llm_cost_log_append_only_truncate BEFORE TRUNCATE ON sigledger.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION sigledger._llm_cost_log_partition_truncate()', v_name);
        EXECUTE format('REVOKE ALL ON sigledger.%I FROM PUBLIC', v_name);
        EXECUTE format('COMMENT ON TABLE sigledger.%I IS %L', v_name,
                       format('Partition of llm_cost_log: rows created in [%s, %s).', v_from, v_to));
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END;
$$;
COMMENT ON FUNCTION sigledger._ensure_ledger_partitions(integer) IS
'Creates the missing monthly partitions of llm_cost_log from the current month to months_ahead months ahead
(0..120); months whose rows sit in the DEFAULT partition are skipped with a WARNING. Returns how many it created.
SQLSTATE: 22023, 55P03';
