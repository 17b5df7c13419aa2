-- sigledger:always
-- Privileges, re-applied after every change: tables are private; the app role executes the API (functions
-- whose names do not start with "_", triggers excluded) and reads the views; the read-only role reads the
-- views and executes the API's STABLE/IMMUTABLE functions. Nobody but the owner writes a table.
REVOKE ALL ON ALL TABLES IN SCHEMA sigledger FROM PUBLIC, sigledger_app, sigledger_readonly;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA sigledger FROM PUBLIC, sigledger_app, sigledger_readonly;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA sigledger FROM PUBLIC, sigledger_app, sigledger_readonly;

DO $grants$
DECLARE
    v_fn regprocedure;
    v_volatile "char";
    v_view regclass;
BEGIN
    FOR v_fn, v_volatile IN
        SELECT p.oid::regprocedure, p.provolatile
          FROM pg_proc p
         WHERE p.pronamespace = 'sigledger'::regnamespace
           AND p.proname !~ '^_'
           AND p.prorettype <> 'trigger'::regtype
           AND p.prokind IN ('f', 'p')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO sigledger_app', v_fn);
        IF v_volatile IN ('s', 'i') THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO sigledger_readonly', v_fn);
        END IF;
    END LOOP;
    FOR v_view IN
        SELECT c.oid::regclass FROM pg_class c
         WHERE c.relnamespace = 'sigledger'::regnamespace AND c.relkind IN ('v', 'm')
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO sigledger_app, sigledger_readonly', v_view);
    END LOOP;
END
$grants$;
