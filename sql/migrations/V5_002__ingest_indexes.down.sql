-- sigledger:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS sigledger.opportunities_merged_into_idx;
DROP INDEX CONCURRENTLY IF EXISTS sigledger.entities_merged_into_idx;
DROP INDEX CONCURRENTLY IF EXISTS sigledger.entity_aliases_alias_lower_key;
