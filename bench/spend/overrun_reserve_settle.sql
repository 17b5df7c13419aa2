-- the budget hot path as the read side sees it at worst: reserve, then settle above the estimate (every settle
-- enters the partial index budget_reservation_overrun_closed_idx)
\set n random(1, :agents)
SELECT reservation_id AS rid FROM sigledger.reserve_budget((SELECT id FROM bench.hot_agents WHERE n = :n), 0.01, interval '10 minutes') \gset
SELECT ledger_id FROM sigledger.settle_budget(:rid, 0.012, 10, 5, 'm', 'p');
