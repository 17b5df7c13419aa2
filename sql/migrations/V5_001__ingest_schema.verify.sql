-- Verify V5_001: raises if a piece is missing.
DO $$
BEGIN
    PERFORM 'sigledger.ingest_settings'::regclass, 'sigledger.entity_review_queue'::regclass,
            'sigledger.opportunity_merges'::regclass, 'sigledger.entity_merges'::regclass;
    IF (SELECT count(*) FROM sigledger.ingest_settings) <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = 'sigledger.ingest_settings must hold exactly one row';
    END IF;
    IF (SELECT count(*) FROM pg_attribute
        WHERE attrelid IN ('sigledger.entities'::regclass, 'sigledger.opportunities'::regclass)
          AND attname IN ('merged_into', 'merged_at') AND NOT attisdropped) <> 4 THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = 'tombstone columns missing on entities/opportunities';
    END IF;
END $$;
