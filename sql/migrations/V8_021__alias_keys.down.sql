-- sigledger:no-transaction
-- Rollback of V8_021: aliases resolve by lower(alias) again. The unique index on lower(alias) is rebuilt
-- CONCURRENTLY and fails (23505, an INVALID index that the next attempt drops and rebuilds) while two aliases
-- collide under lower() that the text rules keep apart ("Istanbul" and "İstanbul"): merge or delete one
-- first. Renamed aliases keep their canonical form, a valid spelling before V8_021 too; the aliases moved to
-- entity_alias_conflicts stay there (V8_020's rollback refuses while any do).
ALTER TABLE sigledger.entity_aliases DROP CONSTRAINT IF EXISTS entity_aliases_alias_key_valid;
ALTER TABLE sigledger.entity_aliases DROP CONSTRAINT IF EXISTS entity_aliases_alias_canonical;
DROP TRIGGER IF EXISTS entity_aliases_set_key ON sigledger.entity_aliases;
CREATE UNIQUE INDEX CONCURRENTLY entity_aliases_alias_lower_key ON sigledger.entity_aliases (lower(alias));
DROP INDEX CONCURRENTLY IF EXISTS sigledger.entity_aliases_alias_key_key;
DROP PROCEDURE IF EXISTS sigledger._v8_021_canon_aliases();
DROP PROCEDURE IF EXISTS sigledger._v8_021_key_aliases();
DROP TABLE IF EXISTS sigledger._v8_021_alias_work;
