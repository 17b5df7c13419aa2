DROP SEQUENCE IF EXISTS sigledger.graph_sync_version_seq;
