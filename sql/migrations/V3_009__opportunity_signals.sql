-- The junction table the seed's code used before it existed (report 1.1.4), now with the foreign keys the
-- seed's text claimed but its SQL did not declare.
CREATE TABLE sigledger.opportunity_signals (
    opportunity_id  uuid NOT NULL,
    signal_id       uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT opportunity_signals_pkey PRIMARY KEY (opportunity_id, signal_id),
    CONSTRAINT opportunity_signals_opportunity_id_fkey FOREIGN KEY (opportunity_id)
        REFERENCES sigledger.opportunities (id) ON DELETE CASCADE,
    CONSTRAINT opportunity_signals_signal_id_fkey FOREIGN KEY (signal_id)
        REFERENCES sigledger.signals (id) ON DELETE CASCADE
);
-- The primary key serves opportunity -> signals; this serves signal -> opportunities. The table is new and
-- empty, so a plain CREATE INDEX inside this transaction blocks nothing.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX idx_opportunity_signals_signal_id ON sigledger.opportunity_signals (signal_id);
COMMENT ON TABLE sigledger.opportunity_signals IS 'Which signals support an opportunity.';
