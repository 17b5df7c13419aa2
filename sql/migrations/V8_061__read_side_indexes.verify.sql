-- Returns a row for each read-side index that is missing or INVALID, and each V8_060 constraint not validated.
SELECT i.name AS problem
  FROM (VALUES ('budget_reservation_overrun_closed_idx'), ('cost_quarantine_unresolved_idx')) AS i (name)
 WHERE NOT EXISTS (SELECT FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                    WHERE c.relname = i.name AND c.relnamespace = 'sigledger'::regnamespace AND x.indisvalid)
UNION ALL
SELECT conname FROM pg_constraint
 WHERE conrelid = 'sigledger.cost_quarantine'::regclass AND NOT convalidated;
