-- sigledger:no-transaction
-- V8_081: budget slices (escrow) for hot budgets, and agents that live under a team or org budget without a
-- limit of their own (docs/budgets.md, Slices; docs/scaling.md).
--
-- - budget.slices (1..64, default 1): how many spend rows a budget period is split over. A reservation takes
--   from one slice (one row lock) without touching the others; a rebalance under the lock of every slice of
--   the period moves headroom between them (sql/functions/102_budget_slices.sql).
-- - budget_spend.slice: part of the primary key (budget_id, period_start, slice). The caps of a period's
--   slices sum to the budget's cap; the backstop CHECK holds on every slice.
-- - budget_spend.frozen_usd: NULL normally. Set (>= 0) on the slices of a period whose total went over its
--   cap: room that a release or an under-estimate settle frees on such a slice is moved from its cap into
--   frozen_usd instead of becoming headroom, until a rebalance recomputes the period from its total
--   (sum of cap + frozen). A period with one slice never uses it.
-- - budget_spend.next_alert_usd: the spend at which the period's next alert threshold is reached (one-slice
--   periods; NULL: not known yet, computed at the next charge). A charge compares its new spend with it in
--   the same statement instead of testing every threshold on every call.
-- - budget_reservation.slices: the slice held at each level (parallel to budget_ids); NULL = slice 0 at every
--   level (every reservation made before this migration).
-- - budget.limit_usd NULL: an agent budget without a limit of its own under a team or org budget (the
--   agent's spending counts only against its parents).
--
-- Online: every statement runs on its own (no-transaction file). Column additions with constant defaults
-- and DROP NOT NULL change the catalog only; the CHECKs are added NOT VALID and validated separately
-- (SHARE UPDATE EXCLUSIVE); the new primary key index is built CONCURRENTLY and then swapped in by one
-- ALTER TABLE (ACCESS EXCLUSIVE for the catalog change only; budget_spend holds one row per budget and
-- period). Until the repeatable functions of this release are applied (the runner applies them after the last
-- versioned migration, same `migrate up`), the previous release's _spend_ensure cannot infer its ON CONFLICT
-- (budget_id, period_start) arbiter: the first reservation of a new budget period fails with 42P10. So this is
-- the last versioned migration of the release (numbered after V8_080's ledger scans, issue 10/13): the window is
-- only the time the repeatable files take to apply, and a failure of an earlier step (V8_080 refusing a view,
-- say) leaves the key as the previous release's functions expect it. A failure of the repeatable files
-- themselves leaves the window open until `migrate up` is run again (tests/migrate/test_upgrade_window.py).
-- (slice counts and numbers are 0..64: smallint is the right size)
-- squawk-ignore prefer-bigint-over-smallint
ALTER TABLE sigledger.budget ADD COLUMN slices smallint NOT NULL DEFAULT 1;
ALTER TABLE sigledger.budget ADD CONSTRAINT budget_slices_range CHECK (slices BETWEEN 1 AND 64) NOT VALID;
ALTER TABLE sigledger.budget VALIDATE CONSTRAINT budget_slices_range;
-- relaxed for agent budgets under a parent only (budget_limit_usd_required below); clients of the previous
-- release never see a NULL: only this release's functions create such rows
-- squawk-ignore ban-drop-not-null
ALTER TABLE sigledger.budget ALTER COLUMN limit_usd DROP NOT NULL;
ALTER TABLE sigledger.budget ADD CONSTRAINT budget_limit_usd_required
    CHECK (limit_usd IS NOT NULL OR (level = 'agent' AND parent_id IS NOT NULL)) NOT VALID;
ALTER TABLE sigledger.budget VALIDATE CONSTRAINT budget_limit_usd_required;

-- squawk-ignore prefer-bigint-over-smallint
ALTER TABLE sigledger.budget_spend ADD COLUMN slice smallint NOT NULL DEFAULT 0;
ALTER TABLE sigledger.budget_spend ADD COLUMN frozen_usd numeric(22,10);
ALTER TABLE sigledger.budget_spend ADD COLUMN next_alert_usd numeric(22,10);
ALTER TABLE sigledger.budget_spend ADD CONSTRAINT budget_spend_slice_range CHECK (slice BETWEEN 0 AND 63) NOT VALID;
ALTER TABLE sigledger.budget_spend VALIDATE CONSTRAINT budget_spend_slice_range;
ALTER TABLE sigledger.budget_spend ADD CONSTRAINT budget_spend_frozen_usd_range
    CHECK (frozen_usd IS NULL OR (frozen_usd <> 'NaN' AND frozen_usd >= 0)) NOT VALID;
ALTER TABLE sigledger.budget_spend VALIDATE CONSTRAINT budget_spend_frozen_usd_range;
CREATE UNIQUE INDEX CONCURRENTLY budget_spend_slice_key ON sigledger.budget_spend (budget_id, period_start, slice);
-- the catalog swap of the key (the index exists and is valid; nothing is scanned or built here)
ALTER TABLE sigledger.budget_spend
    -- (replaced in the same statement by the wider key)
    -- squawk-ignore ban-drop-constraint
    DROP CONSTRAINT budget_spend_pkey,
    ADD CONSTRAINT budget_spend_pkey PRIMARY KEY USING INDEX budget_spend_slice_key;

-- squawk-ignore prefer-bigint-over-smallint
ALTER TABLE sigledger.budget_reservation ADD COLUMN slices smallint[];
ALTER TABLE sigledger.budget_reservation ADD CONSTRAINT budget_reservation_slices_match
    CHECK (slices IS NULL OR cardinality(slices) = cardinality(budget_ids)) NOT VALID;
ALTER TABLE sigledger.budget_reservation VALIDATE CONSTRAINT budget_reservation_slices_match;
COMMENT ON COLUMN sigledger.budget.slices IS
    'Spend rows per period (1..64): a reservation takes one slice''s row lock; headroom is rebalanced between them.';
COMMENT ON COLUMN sigledger.budget_spend.frozen_usd IS
    'NULL normally; on the slices of a period over its cap, room freed there is frozen here until a rebalance.';
COMMENT ON COLUMN sigledger.budget_spend.next_alert_usd IS
    'The spend at which the next alert threshold is reached (one-slice periods); NULL: computed at the next charge.';
COMMENT ON COLUMN sigledger.budget_reservation.slices IS
    'The slice held at each level (parallel to budget_ids); NULL = slice 0 at every level.';
