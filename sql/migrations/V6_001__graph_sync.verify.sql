-- Returns a row per missing object (no rows = verified).
SELECT 'missing sequence sigledger.graph_sync_version_seq' AS problem
 WHERE to_regclass('sigledger.graph_sync_version_seq') IS NULL
UNION ALL
SELECT 'missing index sigledger.idx_outbox_created_at_live'
 WHERE to_regclass('sigledger.idx_outbox_created_at_live') IS NULL;
