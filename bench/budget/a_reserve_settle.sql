-- (a) sigledger: reserve before the call, settle after it (two transactions, both on the budget row)
\set n random(1, :agents)
SELECT reservation_id AS rid FROM sigledger.reserve_budget((SELECT id FROM bench.agents WHERE n = :n), 0.01, interval '10 minutes') \gset
SELECT ledger_id FROM sigledger.settle_budget(:rid, 0.01, 10, 5, 'm', 'p');
