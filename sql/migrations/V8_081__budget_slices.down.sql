-- Rolls back V8_081: each budget period's slices are merged into slice 0 (caps, frozen room, spend, holds,
-- excess and versions summed: the backstop holds on the sum because it held on every slice), the key goes
-- back to (budget_id, period_start) and the columns are dropped. Refused while an agent budget has no limit
-- of its own (the previous schema cannot hold it): give it one with set_budget first.
DO $$
BEGIN
    IF EXISTS (SELECT FROM sigledger.budget WHERE limit_usd IS NULL) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot roll back V8_081: %s agent budget(s) have no limit of their own',
                             (SELECT count(*) FROM sigledger.budget WHERE limit_usd IS NULL)),
            HINT = 'Give each one a limit with set_budget(agent_id, limit_usd), then roll back.';
    END IF;
END;
$$;
UPDATE sigledger.budget_spend s
   SET cap_usd = m.cap, spent_usd = m.spent, reserved_usd = m.reserved, excess_usd = m.excess, frozen_usd = NULL
  FROM (SELECT budget_id, period_start, sum(cap_usd + coalesce(frozen_usd, 0)) AS cap, sum(spent_usd) AS spent,
               sum(reserved_usd) AS reserved, sum(excess_usd) AS excess
          FROM sigledger.budget_spend GROUP BY budget_id, period_start) m
 WHERE s.budget_id = m.budget_id AND s.period_start = m.period_start AND s.slice = 0;
DELETE FROM sigledger.budget_spend WHERE slice > 0;
ALTER TABLE sigledger.budget_spend DROP CONSTRAINT budget_spend_pkey;
ALTER TABLE sigledger.budget_spend ADD CONSTRAINT budget_spend_pkey PRIMARY KEY (budget_id, period_start);
ALTER TABLE sigledger.budget_spend DROP COLUMN slice, DROP COLUMN frozen_usd, DROP COLUMN next_alert_usd;
ALTER TABLE sigledger.budget_reservation DROP COLUMN slices;
ALTER TABLE sigledger.budget DROP CONSTRAINT budget_limit_usd_required, DROP COLUMN slices;
ALTER TABLE sigledger.budget ALTER COLUMN limit_usd SET NOT NULL;
