-- sigledger:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS sigledger.idx_entity_aliases_alias_name;
DROP INDEX CONCURRENTLY IF EXISTS sigledger.idx_entity_aliases_canonical_id;
DROP INDEX CONCURRENTLY IF EXISTS sigledger.idx_signal_entities_signal_id;
DROP INDEX CONCURRENTLY IF EXISTS sigledger.idx_signal_entities_entity_id;
