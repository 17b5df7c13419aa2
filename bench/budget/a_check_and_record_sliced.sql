-- (a) sigledger check_and_record_budget on the hot agent whose budget is split over 8 slices (bench.sliced)
SELECT allowed FROM sigledger.check_and_record_budget((SELECT id FROM bench.sliced), 0.01);
