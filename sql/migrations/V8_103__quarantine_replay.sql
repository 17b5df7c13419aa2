-- sigledger:no-transaction
-- V8_103: a refused cost is quarantined once, however often its batch is sent (issue 13's ledger batch path).
-- The CostTracker sends a batch again when it did not get the answer of the first flush (a timeout, a
-- connection dropped after the commit); the valid rows are replays by their keys, but every refused row was
-- quarantined again by each flush: the operator's list and the unresolved-quarantine metric counted a bad cost
-- once per retry. replay_key identifies a refused row: the SHA-256 of its payload (the batch row as sent,
-- which holds its idempotency key; jsonb text is canonical), for rows that have a key. The writers insert with
-- ON CONFLICT (replay_key) DO NOTHING: a concurrent flush of the same batch waits on the unique index for the
-- first one's transaction, then finds the row. A row without a key has no identity (replay_key NULL) and is
-- quarantined at each flush, as before.
--
-- Online, on whatever the previous schema accepted: the column is nullable with no default (a catalog change
-- under a brief ACCESS EXCLUSIVE lock); the rows already there keep replay_key NULL (duplicates the previous
-- release made stay as they are: the unique index cannot meet them); the index is built CONCURRENTLY (writes go
-- on; the runner rebuilds an INVALID one left by a failed build). The previous release's functions never name
-- the column: they keep quarantining as before until the functions of this release replace them.
ALTER TABLE sigledger.cost_quarantine ADD COLUMN IF NOT EXISTS replay_key text;
COMMENT ON COLUMN sigledger.cost_quarantine.replay_key IS
'SHA-256 (hex) of the payload of a refused row that has an idempotency key: the same row sent again (a batch
replayed) is not quarantined twice (UNIQUE, V8_103). NULL: no key, or quarantined before V8_103.';
CREATE UNIQUE INDEX CONCURRENTLY cost_quarantine_replay_key_key ON sigledger.cost_quarantine (replay_key);
