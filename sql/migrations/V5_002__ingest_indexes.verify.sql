-- Verify V5_002: every index exists and is valid (a failed CONCURRENTLY build leaves an INVALID one).
SELECT want.name AS missing_or_invalid_index
  FROM (VALUES ('entity_aliases_alias_lower_key'), ('entities_merged_into_idx'), ('opportunities_merged_into_idx'))
       AS want (name)
  LEFT JOIN pg_class c ON c.relname = want.name AND c.relnamespace = 'sigledger'::regnamespace
  LEFT JOIN pg_index i ON i.indexrelid = c.oid
 WHERE i.indexrelid IS NULL OR NOT i.indisvalid OR NOT i.indisready;
