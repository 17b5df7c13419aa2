-- Neo4j projection, sync side. The outbox table itself is V3_011 (foundation); this adds what the sync
-- workers need around it.

-- Every snapshot a sync worker reads from Postgres takes a number from this sequence *before* it reads
-- (sigledger._graph_snapshot), and Neo4j keeps the number on each node (sync_version). A later read therefore
-- always carries a larger number, so a slow worker holding an older snapshot cannot overwrite a newer one.
-- A sequence rather than clock_timestamp(): it never goes backwards when the server clock does.
CREATE SEQUENCE sigledger.graph_sync_version_seq AS bigint;
COMMENT ON SEQUENCE sigledger.graph_sync_version_seq IS
    'Version stamped on every Neo4j node written by the sync worker; larger = read later from Postgres.';
