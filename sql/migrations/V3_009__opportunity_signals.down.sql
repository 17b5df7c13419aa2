DROP TABLE sigledger.opportunity_signals;
