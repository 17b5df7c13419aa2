-- Verify V8_021: returns a row per problem.
SELECT 'index entity_aliases_alias_key_key missing or invalid' AS problem
 WHERE NOT EXISTS (SELECT FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                    WHERE c.relname = 'entity_aliases_alias_key_key' AND c.relnamespace = 'sigledger'::regnamespace
                      AND i.indisvalid AND i.indisready)
UNION ALL
SELECT 'index entity_aliases_alias_lower_key still present'
 WHERE to_regclass('sigledger.entity_aliases_alias_lower_key') IS NOT NULL
UNION ALL
SELECT 'trigger entity_aliases_set_key missing'
 WHERE NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'entity_aliases_set_key'
                                            AND tgrelid = 'sigledger.entity_aliases'::regclass)
UNION ALL
SELECT 'constraint not validated: ' || want.name
  FROM (VALUES ('entity_aliases_alias_canonical'), ('entity_aliases_alias_key_valid')) AS want (name)
 WHERE NOT EXISTS (SELECT FROM pg_constraint WHERE conname = want.name AND convalidated)
UNION ALL
SELECT 'scratch object left: ' || x
  FROM (VALUES ('sigledger._v8_021_alias_work')) AS t (x) WHERE to_regclass(x) IS NOT NULL;
