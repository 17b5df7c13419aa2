-- 115: partition maintenance of the ledger (llm_cost_log is partitioned by month of created_at, V4_004).

-- ensure_ledger_partitions: the API wrapper of _ensure_ledger_partitions, called by `sigledger budget sweep`
-- every iteration and by the pg_cron schedule (docs/budgets.md); cheap when the partitions exist.
CREATE OR REPLACE FUNCTION sigledger.ensure_ledger_partitions(p_months_ahead integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    RETURN sigledger._ensure_ledger_partitions(p_months_ahead);
END;
$$;
COMMENT ON FUNCTION sigledger.ensure_ledger_partitions(integer) IS
'Creates the missing monthly partitions of the ledger from the current month to months_ahead (0..120, default 3)
months ahead and returns how many it created (0 when they exist). A month whose rows already sit in the DEFAULT
partition is skipped with a WARNING; while another session holds the DEFAULT partition (an index build, a
vacuum) none is created (WARNING: the next sweep tries again). Gives up with 55P03 after 5s if the ledger is locked.
SQLSTATE: 22023, 55P03';
