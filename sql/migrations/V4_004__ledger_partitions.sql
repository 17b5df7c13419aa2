-- sigledger:no-transaction
-- sigledger:supersedes 357a5a2694fc5cc7cbc8cf8ffd3956169e516d14d465ad1fedefeb89c80d884e
-- V4_004: time partitioning of the append-only ledger sigledger.llm_cost_log (DESIGN.md "Scale"; seed report
-- "Future: consider partitioning large tables").
--
-- Layout after this migration:
--   llm_cost_log                 partitioned by RANGE (created_at); same columns, defaults, named CHECKs,
--                                FKs, comments and append-only triggers as before; identity id continues
--                                the old sequence (setval from its last value).
--   llm_cost_log_legacy          the old table itself, ATTACHed as the partition FROM (MINVALUE) TO (<cutoff>),
--                                cutoff = first day (UTC) of the month after now() + 1 day, so every existing
--                                row (created_at <= now() + 1 day by llm_cost_log_created_at_range) fits.
--                                It keeps its own indexes (renamed *_legacy_*), attached to the parent's.
--   llm_cost_log_pYYYYMM         monthly partitions from the cutoff on, created ahead by
--                                _ensure_ledger_partitions(months_ahead) (here: 3; then by the sweep).
--   llm_cost_log_default         DEFAULT partition: an insert never fails for lack of a partition.
--   llm_cost_log_key             the key registry (not partitioned): idempotency_key PRIMARY KEY, ledger_id
--                                UNIQUE, reservation_id (partial UNIQUE), created_at.
--
-- Why a key registry: a unique index on a partitioned table must contain the partition key, so
-- UNIQUE (idempotency_key) (and UNIQUE (reservation_id), and the PRIMARY KEY (id) that budget_reservation's FK
-- referenced) cannot stay global on the ledger. The registry is their new home: _cost_insert claims the key
-- there first (INSERT ... ON CONFLICT DO NOTHING: concurrent callers of the same key wait for the first one
-- and then see it, exactly one winner), then inserts the ledger row with the claimed id. A BEFORE INSERT
-- trigger on every partition registers rows inserted any other way (check_and_record_budget, the owner by
-- hand) and refuses a key that the registry holds for another row (23505 on llm_cost_log_key_pkey): the
-- backstop. budget_reservation.ledger_id now references llm_cost_log_key (ledger_id).
-- The parent has no PRIMARY KEY (it would have to be (id, created_at), an index build on the old table under
-- the ATTACH lock); each partition has PRIMARY KEY (id) of its own (the legacy one keeps its old one), and ids
-- are globally unique by the identity sequence and by llm_cost_log_key_ledger_id_key.
--
-- Online (rewritten since its first release, which did all of it in one transaction under the ACCESS
-- EXCLUSIVE lock of the RENAME, including the registry backfill and the VALIDATE scan: 19 s of blocked
-- inserts on a million rows). Now the reading and writing happen before the swap, outside any lock that
-- blocks the application, and the swap itself touches only the catalog:
--   1. the key registry and the trigger that registers every new row, on the plain table (a short lock);
--   2. the registry backfilled from the existing rows in batches of 10,000, each committed (inserts go on;
--      rows inserted meanwhile are registered by the trigger, ON CONFLICT DO NOTHING joins the two);
--   3. the legacy bound as a CHECK added NOT VALID and validated (a scan under SHARE UPDATE EXCLUSIVE);
--   4. the swap, one transaction: rename, the partitioned parent, ATTACH without a scan (the validated CHECK
--      proves the bound, every parent index and foreign key matches one of the old table), budget_reservation's
--      foreign key moved to the registry NOT VALID; no row is read or written;
--   5. that foreign key validated (a scan of budget_reservation under SHARE UPDATE EXCLUSIVE).
-- It locks the ledger first and takes the other tables NOWAIT, so it never waits while holding a lock (no
-- deadlock with the application; a busy moment is retried by the runner). The resulting schema is the first
-- release's (tests/migrate/test_superseded.py), so a database that ran the first content is not drifted. No
-- temporary table (a deployer may lack TEMP).
-- Creating a later partition scans the DEFAULT partition (to prove it holds no row of the new range):
-- partitions are created months ahead so that DEFAULT stays empty and that scan is instant; if DEFAULT does
-- hold rows of a month, _ensure_ledger_partitions skips that month with a WARNING instead of failing (move the
-- rows by hand, see docs/budgets.md).

-- 1. the key registry; from now on every new ledger row is registered as it is inserted
BEGIN;
CREATE TABLE sigledger.llm_cost_log_key (
    idempotency_key  text        NOT NULL,
    ledger_id        bigint      NOT NULL,
    reservation_id   bigint,
    created_at       timestamptz NOT NULL,
    CONSTRAINT llm_cost_log_key_pkey PRIMARY KEY (idempotency_key),
    CONSTRAINT llm_cost_log_key_ledger_id_key UNIQUE (ledger_id)
);
COMMENT ON TABLE sigledger.llm_cost_log_key IS
    'Global uniqueness of the partitioned ledger: one row per ledger row (idempotency key, id, reservation), written in the same transaction.';
-- a table created in this transaction: a plain CREATE INDEX blocks nobody
-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX llm_cost_log_key_reservation_id_key ON sigledger.llm_cost_log_key (reservation_id)
    WHERE reservation_id IS NOT NULL;

-- BEFORE INSERT on every partition: registers the row's key unless _cost_insert already claimed it for this id
CREATE FUNCTION sigledger._llm_cost_log_register_key() RETURNS trigger
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
-- The backstop of global idempotency-key uniqueness on the partitioned ledger (see V4_004).
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO sigledger.llm_cost_log_key (idempotency_key, ledger_id, reservation_id, created_at)
    VALUES (NEW.idempotency_key, NEW.id, NEW.reservation_id, NEW.created_at)
    ON CONFLICT (idempotency_key) DO NOTHING;
    IF NOT FOUND THEN
        SELECT k.ledger_id INTO v_id FROM sigledger.llm_cost_log_key k WHERE k.idempotency_key = NEW.idempotency_key;
        IF v_id IS DISTINCT FROM NEW.id THEN
            RAISE EXCEPTION USING
                ERRCODE = '23505',
                CONSTRAINT = 'llm_cost_log_key_pkey',
                TABLE = 'llm_cost_log_key',
                SCHEMA = 'sigledger',
                MESSAGE = format('duplicate idempotency key %L in llm_cost_log (ledger id %s)', NEW.idempotency_key, v_id);
        END IF;
    END IF;
    RETURN NEW;
END;
$$;
-- (moves to the partitioned parent at the swap)
CREATE TRIGGER llm_cost_log_register_key
    BEFORE INSERT ON sigledger.llm_cost_log
    FOR EACH ROW EXECUTE FUNCTION sigledger._llm_cost_log_register_key();
COMMIT;

-- 2. the rows that existed before the trigger, in batches (a re-run skips what is registered)
DO $backfill$
DECLARE
    v_last bigint := 0;
    v_next bigint;
BEGIN
    LOOP
        SELECT max(id) INTO v_next
          FROM (SELECT id FROM sigledger.llm_cost_log WHERE id > v_last ORDER BY id LIMIT 10000) b;
        EXIT WHEN v_next IS NULL;
        INSERT INTO sigledger.llm_cost_log_key (idempotency_key, ledger_id, reservation_id, created_at)
        SELECT l.idempotency_key, l.id, l.reservation_id, l.created_at FROM sigledger.llm_cost_log l
         WHERE l.id > v_last AND l.id <= v_next
        ON CONFLICT DO NOTHING;
        v_last := v_next;
        COMMIT;
    END LOOP;
END
$backfill$;

-- 3. the bound of the legacy partition (every existing row: created_at <= now() + 1 day by
-- llm_cost_log_created_at_range), proven before ATTACH so that ATTACH does not scan
DO $$
DECLARE
    v_cutoff timestamptz := (date_trunc('month', (now() + interval '1 day') AT TIME ZONE 'UTC') + interval '1 month')
                            AT TIME ZONE 'UTC';
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'llm_cost_log_legacy_range'
                      AND conrelid = 'sigledger.llm_cost_log'::regclass) THEN
        EXECUTE format('ALTER TABLE sigledger.llm_cost_log ADD CONSTRAINT llm_cost_log_legacy_range '
                       'CHECK (created_at < %L) NOT VALID', v_cutoff);
    END IF;
END;
$$;
ALTER TABLE sigledger.llm_cost_log VALIDATE CONSTRAINT llm_cost_log_legacy_range;

-- 4. the swap: catalog only, under ACCESS EXCLUSIVE for milliseconds
BEGIN;
-- the ledger first (waited for, bounded by the runner's lock_timeout), then the other tables without waiting
-- (NOWAIT: a busy one makes the runner retry the step rather than hold the ledger while it waits)
LOCK TABLE sigledger.llm_cost_log IN ACCESS EXCLUSIVE MODE;
LOCK TABLE sigledger.budget_reservation IN ACCESS EXCLUSIVE MODE NOWAIT;
LOCK TABLE sigledger.agent_registry IN SHARE ROW EXCLUSIVE MODE NOWAIT;
-- squawk-ignore renaming-table
ALTER TABLE sigledger.llm_cost_log RENAME TO llm_cost_log_legacy;
-- index and PK/UNIQUE constraint names are schema-wide: the parent's indexes take the old names
-- (llm_cost_log_reservation_id_key stays: the legacy partition keeps it, the registry has its own)
-- (the names move to the partitioned parent, which the clients use; the legacy partition is internal)
-- squawk-ignore renaming-object
ALTER TABLE sigledger.llm_cost_log_legacy RENAME CONSTRAINT llm_cost_log_pkey TO llm_cost_log_legacy_pkey;
ALTER TABLE sigledger.llm_cost_log_legacy
    -- squawk-ignore renaming-object
    RENAME CONSTRAINT llm_cost_log_idempotency_key_key TO llm_cost_log_legacy_idempotency_key_key;
-- squawk-ignore renaming-object
ALTER INDEX sigledger.llm_cost_log_created_at_idx RENAME TO llm_cost_log_legacy_created_at_idx;
-- squawk-ignore renaming-object
ALTER INDEX sigledger.llm_cost_log_agent_charged_at_idx RENAME TO llm_cost_log_legacy_agent_charged_at_idx;

-- budget_reservation.ledger_id: from the old primary key to the registry (validated in step 5)
-- (re-added at once below under the same name; the guarantee moves to the registry)
-- squawk-ignore ban-drop-constraint
ALTER TABLE sigledger.budget_reservation DROP CONSTRAINT budget_reservation_ledger_id_fkey;
ALTER TABLE sigledger.budget_reservation
    ADD CONSTRAINT budget_reservation_ledger_id_fkey
    FOREIGN KEY (ledger_id) REFERENCES sigledger.llm_cost_log_key (ledger_id) NOT VALID;

-- the legacy table's own triggers give way to the parent's (cloned to every partition)
DROP TRIGGER llm_cost_log_append_only_row ON sigledger.llm_cost_log_legacy;
DROP TRIGGER llm_cost_log_append_only_truncate ON sigledger.llm_cost_log_legacy;
DROP TRIGGER llm_cost_log_register_key ON sigledger.llm_cost_log_legacy;

CREATE TABLE sigledger.llm_cost_log (
    LIKE sigledger.llm_cost_log_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS
) PARTITION BY RANGE (created_at);
-- (the parent was just created by LIKE, which copied the legacy-only bound)
-- squawk-ignore ban-drop-constraint
ALTER TABLE sigledger.llm_cost_log DROP CONSTRAINT llm_cost_log_legacy_range;
-- the identity moves to the parent at the old sequence's position (inserts go through the parent)
DO $identity$
DECLARE
    v_last bigint;
    v_called boolean;
BEGIN
    SELECT last_value, is_called INTO v_last, v_called FROM sigledger.llm_cost_log_id_seq;
    ALTER TABLE sigledger.llm_cost_log_legacy ALTER COLUMN id DROP IDENTITY;
    ALTER TABLE sigledger.llm_cost_log ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
    PERFORM setval('sigledger.llm_cost_log_id_seq', v_last, v_called);
END
$identity$;
COMMENT ON TABLE sigledger.llm_cost_log IS
    'Append-only ledger of LLM call costs. No UPDATE/DELETE/TRUNCATE: no privilege is granted and a trigger refuses them.';
-- a partitioned table without partitions yet: these build nothing; ATTACH below adopts the legacy indexes
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX llm_cost_log_created_at_idx ON sigledger.llm_cost_log (created_at);
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX llm_cost_log_agent_charged_at_idx ON sigledger.llm_cost_log (agent_id, charged_at);
-- a parent without partitions: nothing to scan; ATTACH adopts the legacy table's identical validated FKs
ALTER TABLE sigledger.llm_cost_log
    -- squawk-ignore constraint-missing-not-valid, adding-foreign-key-constraint
    ADD CONSTRAINT llm_cost_log_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES sigledger.agent_registry (id),
    -- squawk-ignore constraint-missing-not-valid, adding-foreign-key-constraint
    ADD CONSTRAINT llm_cost_log_reservation_id_fkey
        FOREIGN KEY (reservation_id) REFERENCES sigledger.budget_reservation (id);

-- TRUNCATE of a partition: refused like on the parent, unless the parent's TRUNCATE trigger is disabled (a
-- superuser cleanup that switched the ledger's triggers off, ALTER TABLE llm_cost_log DISABLE TRIGGER USER,
-- then TRUNCATE llm_cost_log: that also fires the partitions' own statement triggers).
CREATE FUNCTION sigledger._llm_cost_log_partition_truncate() RETURNS trigger
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_trigger t
                WHERE t.tgrelid = 'sigledger.llm_cost_log'::regclass
                  AND t.tgname = 'llm_cost_log_append_only_truncate' AND t.tgenabled = 'D') THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = '42501',
        MESSAGE = format('llm_cost_log is append-only: %s refused', TG_OP),
        HINT = 'Record a correcting entry instead; costs are never edited or removed.';
END;
$$;

CREATE TRIGGER llm_cost_log_register_key
    BEFORE INSERT ON sigledger.llm_cost_log
    FOR EACH ROW EXECUTE FUNCTION sigledger._llm_cost_log_register_key();
CREATE TRIGGER llm_cost_log_append_only_row
    BEFORE UPDATE OR DELETE ON sigledger.llm_cost_log
    FOR EACH ROW EXECUTE FUNCTION sigledger._llm_cost_log_append_only();
CREATE TRIGGER llm_cost_log_append_only_truncate
    BEFORE TRUNCATE ON sigledger.llm_cost_log
    FOR EACH STATEMENT EXECUTE FUNCTION sigledger._llm_cost_log_append_only();

-- _ledger_legacy_cutoff: the upper bound of the legacy partition (from its CHECK constraint).
CREATE FUNCTION sigledger._ledger_legacy_cutoff() RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = sigledger, pg_temp
AS $$
SELECT substring(pg_get_constraintdef(c.oid) FROM '''([^'']+)''')::timestamptz
  FROM pg_constraint c
 WHERE c.conname = 'llm_cost_log_legacy_range' AND c.conrelid = 'sigledger.llm_cost_log_legacy'::regclass;
$$;

-- _ensure_ledger_partitions: creates the monthly partitions (UTC months) of llm_cost_log from the current
-- month to p_months_ahead months ahead that do not exist yet (months before the legacy cutoff are covered by
-- llm_cost_log_legacy). Each new partition gets PRIMARY KEY (id), the TRUNCATE trigger and no privilege.
-- A month whose rows already sit in the DEFAULT partition is skipped with a WARNING (creating it would have
-- to move them; see docs/budgets.md). Returns the number of partitions created.
CREATE FUNCTION sigledger._ensure_ledger_partitions(p_months_ahead integer) RETURNS integer
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

-- no scan: llm_cost_log_legacy_range implies the bound, and the indexes match
DO $$
BEGIN
    EXECUTE format('ALTER TABLE sigledger.llm_cost_log ATTACH PARTITION sigledger.llm_cost_log_legacy '
                   'FOR VALUES FROM (MINVALUE) TO (%L)', sigledger._ledger_legacy_cutoff());
END;
$$;
-- a direct TRUNCATE of a partition does not fire the parent's statement trigger: each partition has its own
CREATE TRIGGER llm_cost_log_append_only_truncate
    BEFORE TRUNCATE ON sigledger.llm_cost_log_legacy
    FOR EACH STATEMENT EXECUTE FUNCTION sigledger._llm_cost_log_partition_truncate();
COMMENT ON TABLE sigledger.llm_cost_log_legacy IS
    'Partition of llm_cost_log: every row created before V4_004''s cutoff (the pre-partitioning table itself).';

CREATE TABLE sigledger.llm_cost_log_default PARTITION OF sigledger.llm_cost_log DEFAULT;
-- a table created in this transaction, empty: nothing to scan, nobody to block
-- squawk-ignore constraint-missing-not-valid, adding-serial-primary-key-field
ALTER TABLE sigledger.llm_cost_log_default ADD CONSTRAINT llm_cost_log_default_pkey PRIMARY KEY (id);
CREATE TRIGGER llm_cost_log_append_only_truncate
    BEFORE TRUNCATE ON sigledger.llm_cost_log_default
    FOR EACH STATEMENT EXECUTE FUNCTION sigledger._llm_cost_log_partition_truncate();
COMMENT ON TABLE sigledger.llm_cost_log_default IS
    'DEFAULT partition of llm_cost_log: should stay empty (partitions are created months ahead); see docs/budgets.md.';
REVOKE ALL ON sigledger.llm_cost_log, sigledger.llm_cost_log_legacy, sigledger.llm_cost_log_default FROM PUBLIC;

SELECT sigledger._ensure_ledger_partitions(3);
COMMIT;

-- 5. the foreign key added NOT VALID at the swap (SHARE UPDATE EXCLUSIVE: budget_reservation stays writable)
ALTER TABLE sigledger.budget_reservation VALIDATE CONSTRAINT budget_reservation_ledger_id_fkey;
