-- Verify V5_002: every index exists and is valid (a failed CONCURRENTLY build leaves an INVALID one).
-- entity_aliases_alias_lower_key is superseded by entity_aliases_alias_key_key (V8_021, text rules), which
-- drops it: once that migration ran, V8_021's own verify checks the new key instead.
SELECT want.name AS missing_or_invalid_index
  FROM (VALUES ('entity_aliases_alias_lower_key'), ('entities_merged_into_idx'), ('opportunities_merged_into_idx'))
       AS want (name)
  LEFT JOIN pg_class c ON c.relname = want.name AND c.relnamespace = 'sigledger'::regnamespace
  LEFT JOIN pg_index i ON i.indexrelid = c.oid
 WHERE (i.indexrelid IS NULL OR NOT i.indisvalid OR NOT i.indisready)
   AND NOT (want.name = 'entity_aliases_alias_lower_key'
            AND to_regclass('sigledger.entity_aliases_alias_key_key') IS NOT NULL);
