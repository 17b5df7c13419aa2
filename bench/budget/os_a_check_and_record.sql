-- overspend run, (a) check_and_record_budget on a hard $1.00 budget that runs out
SELECT allowed FROM sigledger.check_and_record_budget(:aid, 0.01);
