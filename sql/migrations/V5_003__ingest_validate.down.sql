-- Nothing to undo: a validated constraint is dropped by V5_001's down file.
SELECT 1;
