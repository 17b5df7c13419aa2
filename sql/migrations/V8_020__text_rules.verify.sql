-- Verify V8_020: returns a row per missing piece.
SELECT want.name AS missing
  FROM (VALUES ('sigledger._text_canon(text)'), ('sigledger._text_key(text)'),
               ('sigledger._entity_aliases_set_key()')) AS want (name)
 WHERE to_regprocedure(want.name) IS NULL
UNION ALL
SELECT 'sigledger.entity_alias_conflicts' WHERE to_regclass('sigledger.entity_alias_conflicts') IS NULL
UNION ALL
SELECT 'sigledger.entity_aliases.alias_key'
 WHERE NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'sigledger.entity_aliases'::regclass
                                             AND attname = 'alias_key' AND NOT attisdropped)
UNION ALL
-- the fast paths agree with the general one
SELECT 'text rules: ' || x FROM (VALUES (' Acme '), (U&'\00a0Caf\00e9\3000'), (U&'STRA\00dfE')) AS t (x)
 WHERE sigledger._text_key(x) <> CASE x WHEN ' Acme ' THEN 'acme' WHEN U&'STRA\00dfE' THEN 'strasse' ELSE U&'caf\00e9' END;
