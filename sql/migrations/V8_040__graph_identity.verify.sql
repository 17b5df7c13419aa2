-- Returns a row per missing object (no rows = verified).
SELECT 'missing table sigledger.graph_projection' AS problem
 WHERE to_regclass('sigledger.graph_projection') IS NULL;
