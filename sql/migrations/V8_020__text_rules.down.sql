-- Rollback of V8_020 (after V8_021's). Refuses while entity_alias_conflicts holds aliases that V8_021 moved
-- there: they exist nowhere else. Restore or export them first (docs/text-rules.md).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM sigledger.entity_alias_conflicts) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('entity_alias_conflicts holds %s alias(es) that exist nowhere else',
                             (SELECT count(*) FROM sigledger.entity_alias_conflicts)),
            HINT = 'Export them (COPY sigledger.entity_alias_conflicts TO ...) and delete them, then roll back again.';
    END IF;
END
$$;
DROP VIEW IF EXISTS sigledger.alias_conflicts;
DROP VIEW IF EXISTS sigledger.entity_alias_lookup;
DROP TABLE sigledger.entity_alias_conflicts;
ALTER TABLE sigledger.entity_aliases DROP COLUMN IF EXISTS alias_key;
DROP FUNCTION IF EXISTS sigledger._entity_aliases_set_key();
DROP FUNCTION IF EXISTS sigledger._text_key(text);
DROP FUNCTION IF EXISTS sigledger._text_canon(text);
