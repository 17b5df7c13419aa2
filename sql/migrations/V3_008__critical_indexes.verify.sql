-- Returns a row for each of the four indexes that is missing or not valid.
SELECT want.name AS missing_or_invalid_index
  FROM (VALUES ('idx_signal_entities_entity_id'), ('idx_signal_entities_signal_id'),
               ('idx_entity_aliases_canonical_id'), ('idx_entity_aliases_alias_name')) AS want (name)
 WHERE NOT EXISTS (
       SELECT FROM pg_class c
         JOIN pg_index i ON i.indexrelid = c.oid
        WHERE c.relnamespace = 'sigledger'::regnamespace AND c.relname = want.name
          AND i.indisvalid AND i.indisready);
