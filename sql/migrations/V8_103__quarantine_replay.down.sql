-- sigledger:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS sigledger.cost_quarantine_replay_key_key;
ALTER TABLE sigledger.cost_quarantine DROP COLUMN IF EXISTS replay_key;
