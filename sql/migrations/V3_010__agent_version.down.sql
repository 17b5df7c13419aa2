DROP TRIGGER IF EXISTS trg_increment_agent_version ON sigledger.agent_registry;
DROP FUNCTION IF EXISTS sigledger._increment_agent_version();
ALTER TABLE sigledger.agent_registry DROP COLUMN version;
