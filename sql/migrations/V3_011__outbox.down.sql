DROP FUNCTION IF EXISTS sigledger._outbox_emit(text, uuid, text, jsonb);
DROP TABLE sigledger.outbox;
