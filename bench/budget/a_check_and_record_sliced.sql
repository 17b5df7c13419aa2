-- (a) sigledger check_and_record_budget on the hot agent whose budget is split over :slices slices (bench.sliced)
SELECT allowed FROM sigledger.check_and_record_budget((SELECT id FROM bench.sliced WHERE slices = :slices), 0.01);
