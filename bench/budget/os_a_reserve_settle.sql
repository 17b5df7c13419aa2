-- overspend run, (a) reserve + settle on a hard $1.00 budget that runs out; the LLM call takes 5 ms
SELECT bench.try_reserve(:aid, 0.01) AS rid \gset
\if :rid > 0
\sleep 5 ms
SELECT ledger_id FROM sigledger.settle_budget(:rid, 0.01, 10, 5, 'm', 'p');
\endif
