-- Rolls back V4_004: llm_cost_log becomes the plain table again (the legacy partition itself, detached, with
-- the rows of every later partition moved back into it), with its identity (position carried over), primary
-- key, unique key, indexes, triggers and budget_reservation's foreign key; the key registry is dropped.
-- Moving the rows reads and writes every row created since V4_004: destructive work, by design of a down file.
-- Nothing is lost: every ledger row moves back into the plain table, and the key registry is derived from the
-- ledger (V4_004 rebuilds it), hence:
-- sigledger:no-loss llm_cost_log llm_cost_log_key
-- (No temporary table: a deployer may lack TEMP; the identity's position travels in a DO block.)
DROP FUNCTION IF EXISTS sigledger.ensure_ledger_partitions(integer);
ALTER TABLE sigledger.llm_cost_log DETACH PARTITION sigledger.llm_cost_log_legacy;
DROP TRIGGER IF EXISTS llm_cost_log_register_key ON sigledger.llm_cost_log_legacy;
DROP TRIGGER IF EXISTS llm_cost_log_append_only_row ON sigledger.llm_cost_log_legacy;
ALTER TABLE sigledger.llm_cost_log_legacy DROP CONSTRAINT llm_cost_log_legacy_range;
INSERT INTO sigledger.llm_cost_log_legacy SELECT * FROM sigledger.llm_cost_log;
-- the legacy table's TRUNCATE trigger goes back to the plain table's function
DROP TRIGGER llm_cost_log_append_only_truncate ON sigledger.llm_cost_log_legacy;
DO $identity$
DECLARE
    v_last bigint;
    v_called boolean;
BEGIN
    SELECT last_value, is_called INTO v_last, v_called FROM sigledger.llm_cost_log_id_seq;
    DROP TABLE sigledger.llm_cost_log;
    ALTER TABLE sigledger.llm_cost_log_legacy RENAME TO llm_cost_log;
    ALTER TABLE sigledger.llm_cost_log ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
    PERFORM setval('sigledger.llm_cost_log_id_seq', v_last, v_called);
END
$identity$;
DROP FUNCTION sigledger._llm_cost_log_partition_truncate();
DROP FUNCTION sigledger._ensure_ledger_partitions(integer);
DROP FUNCTION sigledger._ledger_legacy_cutoff();
DROP FUNCTION sigledger._llm_cost_log_register_key();

ALTER TABLE sigledger.llm_cost_log RENAME CONSTRAINT llm_cost_log_legacy_pkey TO llm_cost_log_pkey;
ALTER TABLE sigledger.llm_cost_log
    RENAME CONSTRAINT llm_cost_log_legacy_idempotency_key_key TO llm_cost_log_idempotency_key_key;
ALTER INDEX sigledger.llm_cost_log_legacy_created_at_idx RENAME TO llm_cost_log_created_at_idx;
ALTER INDEX sigledger.llm_cost_log_legacy_agent_charged_at_idx RENAME TO llm_cost_log_agent_charged_at_idx;
CREATE TRIGGER llm_cost_log_append_only_row
    BEFORE UPDATE OR DELETE ON sigledger.llm_cost_log
    FOR EACH ROW EXECUTE FUNCTION sigledger._llm_cost_log_append_only();
CREATE TRIGGER llm_cost_log_append_only_truncate
    BEFORE TRUNCATE ON sigledger.llm_cost_log
    FOR EACH STATEMENT EXECUTE FUNCTION sigledger._llm_cost_log_append_only();
COMMENT ON TABLE sigledger.llm_cost_log IS
    'Append-only ledger of LLM call costs. No UPDATE/DELETE/TRUNCATE: no privilege is granted and a trigger refuses them.';

ALTER TABLE sigledger.budget_reservation DROP CONSTRAINT budget_reservation_ledger_id_fkey;
ALTER TABLE sigledger.budget_reservation
    ADD CONSTRAINT budget_reservation_ledger_id_fkey FOREIGN KEY (ledger_id) REFERENCES sigledger.llm_cost_log (id);
DROP TABLE sigledger.llm_cost_log_key;
