-- V5_003 validate the CHECKs V5_001 added NOT VALID: a scan under SHARE UPDATE EXCLUSIVE, writes continue.
ALTER TABLE sigledger.entities VALIDATE CONSTRAINT entities_tombstone_consistent;
ALTER TABLE sigledger.entity_aliases VALIDATE CONSTRAINT entity_aliases_alias_trimmed;
