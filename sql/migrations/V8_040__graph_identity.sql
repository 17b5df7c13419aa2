-- Which projection a Neo4j graph holds (docs/graph.md, "Epochs"). Neo4j keeps the same three facts on its
-- (:SigledgerGraph {key: 'meta'}) node; a sync worker writes nothing when the two disagree.
--   database_id  this database, drawn at its first sync (a database cloned from a template that never synced
--                draws its own);
--   epoch        incremented by every `graph rebuild`, which also moves graph_sync_version_seq above every
--                version the graph holds (sigledger._graph_adopt): after a restore from a backup the sequence
--                goes back, and only a new epoch makes the graph's newer versions overwritable again;
--   written      a graph holds this epoch's projection: a graph without the meta node then was wiped or
--                replaced, and sync refuses instead of projecting only what changes from now on.
-- A new, empty table: nothing to lock or rewrite.
CREATE TABLE sigledger.graph_projection (
    singleton        boolean PRIMARY KEY DEFAULT true,
    database_id      uuid NOT NULL DEFAULT gen_random_uuid(),
    epoch            bigint NOT NULL DEFAULT 1,
    written          boolean NOT NULL DEFAULT false,
    epoch_started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT graph_projection_singleton CHECK (singleton),
    CONSTRAINT graph_projection_epoch_positive CHECK (epoch >= 1)
);
COMMENT ON TABLE sigledger.graph_projection IS
    'Identity of this database''s Neo4j projection: database id, epoch (bumped by graph rebuild), written.';
