-- Returns a row per missing object (no rows = verified).
SELECT 'missing sequence sigledger.graph_sync_version_seq' AS problem
 WHERE to_regclass('sigledger.graph_sync_version_seq') IS NULL;
