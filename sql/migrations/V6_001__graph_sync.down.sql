DROP INDEX IF EXISTS sigledger.idx_outbox_created_at_live;
DROP SEQUENCE IF EXISTS sigledger.graph_sync_version_seq;
