-- sigledger:as-session-user
-- The roles stay (cluster-wide; other databases may use them); this database stops granting them anything.
REVOKE USAGE ON SCHEMA sigledger FROM sigledger_admin, sigledger_graph;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA sigledger FROM sigledger_admin, sigledger_graph;
