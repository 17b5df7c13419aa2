-- sigledger:as-session-user
-- sigledger:supersedes e4ff0076ef792ec00e202ffbbcb2617e1f373a0e103f9167406f8ac30287436e
-- Two more roles so that no long-running process needs the owner role, and the application role cannot
-- administer what it is constrained by:
-- - sigledger_admin: budgets, limits, prices, reconciliation repair, expiry sweeps (and everything the app
--   role may do, by membership). An application holding only sigledger_app cannot raise its own budget.
-- - sigledger_graph: the Neo4j sync worker: claims, acknowledges and fails outbox rows and reads the
--   snapshots it projects; nothing else.
-- Which function each role may execute is declared in sql/functions/900_grants.sql.
-- The roles are the runner's business (created or corrected before any migration runs, only where they differ
-- from sigledger/migrate/roles.py); this file makes them itself only when missing, and grants nothing twice.
-- Rewritten since its first release, which made these roles LOGIN with settings and ran GRANT and ALTER ROLE
-- unconditionally (a deployer without CREATEROLE could not run it).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sigledger_admin') THEN
        CREATE ROLE sigledger_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sigledger_graph') THEN
        CREATE ROLE sigledger_graph NOLOGIN;
    END IF;
    IF NOT pg_has_role('sigledger_admin', 'sigledger_app', 'MEMBER') THEN
        GRANT sigledger_app TO sigledger_admin;
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA sigledger TO sigledger_admin, sigledger_graph;
