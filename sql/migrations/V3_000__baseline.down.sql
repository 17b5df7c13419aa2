-- Removes every sigledger object. The roles stay: they are cluster-wide and may serve other databases.
DROP SCHEMA IF EXISTS sigledger CASCADE;
