-- sigledger:as-session-user
-- Two more roles so that no long-running process needs the owner role, and the application role cannot
-- administer what it is constrained by:
-- - sigledger_admin: budgets, limits, prices, reconciliation repair, expiry sweeps (and everything the app
--   role may do, by membership). An application holding only sigledger_app cannot raise its own budget.
-- - sigledger_graph: the Neo4j sync worker: claims, acknowledges and fails outbox rows and reads the
--   snapshots it projects; nothing else.
-- Which function each role may execute is declared in sql/functions/900_grants.sql.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sigledger_admin') THEN
        CREATE ROLE sigledger_admin LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sigledger_graph') THEN
        CREATE ROLE sigledger_graph LOGIN;
    END IF;
END
$roles$;

GRANT sigledger_app TO sigledger_admin;
ALTER ROLE sigledger_admin SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE sigledger_admin SET lock_timeout = '10s';
ALTER ROLE sigledger_graph SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE sigledger_graph SET statement_timeout = '60s';
GRANT USAGE ON SCHEMA sigledger TO sigledger_admin, sigledger_graph;
