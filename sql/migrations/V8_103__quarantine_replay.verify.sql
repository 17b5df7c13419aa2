-- Verify V8_103: returns a row per problem (the column or its unique index missing, or the index INVALID).
SELECT 'column missing: cost_quarantine.replay_key' AS problem
 WHERE NOT EXISTS (SELECT FROM pg_attribute a
                    WHERE a.attrelid = 'sigledger.cost_quarantine'::regclass AND a.attname = 'replay_key'
                      AND NOT a.attisdropped)
UNION ALL
SELECT 'index missing or INVALID: cost_quarantine_replay_key_key'
 WHERE NOT EXISTS (SELECT FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                    WHERE c.relname = 'cost_quarantine_replay_key_key' AND c.relnamespace = 'sigledger'::regnamespace
                      AND x.indisvalid AND x.indisunique);
