SELECT conname AS not_validated FROM pg_constraint
 WHERE conname IN ('entities_tombstone_consistent', 'entity_aliases_alias_trimmed') AND NOT convalidated;
