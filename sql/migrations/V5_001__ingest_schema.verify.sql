-- Verify V5_001: returns a row per missing piece.
SELECT want.name AS missing
  FROM (VALUES ('sigledger.ingest_settings'), ('sigledger.entity_review_queue'),
               ('sigledger.opportunity_merges'), ('sigledger.entity_merges')) AS want (name)
 WHERE to_regclass(want.name) IS NULL
UNION ALL
SELECT 'sigledger.entities.merged_at'
 WHERE NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'sigledger.entities'::regclass
                                             AND attname = 'merged_at' AND NOT attisdropped)
UNION ALL
SELECT 'ingest_settings row' WHERE (SELECT count(*) FROM sigledger.ingest_settings) <> 1;
