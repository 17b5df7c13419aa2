-- (a) sigledger reserve+settle on the hot agent whose budget is split over :slices slices (bench.sliced)
SELECT reservation_id AS rid FROM sigledger.reserve_budget((SELECT id FROM bench.sliced WHERE slices = :slices), 0.01, interval '10 minutes') \gset
SELECT ledger_id FROM sigledger.settle_budget(:rid, 0.01, 10, 5, 'm', 'p');
