-- _increment_agent_version: the seed's optimistic-locking trigger (report 1.2.4). Every UPDATE of an agent
-- row bumps its version, whoever writes it, so an expected_version check can never miss a change.
CREATE OR REPLACE FUNCTION sigledger._increment_agent_version()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION sigledger._increment_agent_version() IS 'Trigger: bumps agent_registry.version on every update.';

CREATE OR REPLACE TRIGGER trg_increment_agent_version
    BEFORE UPDATE ON sigledger.agent_registry
    FOR EACH ROW
    EXECUTE FUNCTION sigledger._increment_agent_version();
