-- sigledger:no-transaction
-- The seed's four critical indexes (report 1.1.3), built CONCURRENTLY so writes continue during the build.
-- The runner runs this file statement by statement, keeps an index that exists and is valid, drops and
-- rebuilds one left INVALID by a failed build, and resumes here after a failure.
-- idx_signal_entities_signal_id duplicates the leading column of signal_entities_pkey; it is kept for parity
-- with the seed's V3_008 (dropping it is a later, separate migration if the planner never uses it).
CREATE INDEX CONCURRENTLY idx_signal_entities_entity_id ON sigledger.signal_entities (entity_id);
CREATE INDEX CONCURRENTLY idx_signal_entities_signal_id ON sigledger.signal_entities (signal_id);
CREATE INDEX CONCURRENTLY idx_entity_aliases_canonical_id ON sigledger.entity_aliases (canonical_entity_id);
CREATE INDEX CONCURRENTLY idx_entity_aliases_alias_name ON sigledger.entity_aliases (lower(alias));
