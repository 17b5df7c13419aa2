-- The seed's optimistic-locking column (report 1.2.4). bigint, not the seed's integer: a hot agent updated
-- 750 times a second would overflow an integer in about five weeks. Adding a column with a constant default
-- is a catalog-only change (no table rewrite). The increment trigger and its function live in
-- sql/functions/010_agent_version.sql (repeatable).
ALTER TABLE sigledger.agent_registry ADD COLUMN version bigint NOT NULL DEFAULT 0;
