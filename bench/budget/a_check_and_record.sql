-- (a) sigledger: the seed's API made atomic (one transaction, one guarded statement)
\set n random(1, :agents)
SELECT allowed FROM sigledger.check_and_record_budget((SELECT id FROM bench.agents WHERE n = :n), 0.01);
