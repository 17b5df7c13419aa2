-- (f) the floor of any PL/pgSQL design: the bare reserve+settle writes inside functions shaped like sigledger's
-- (setup.sql: bench.floor_reserve, bench.floor_settle; two transactions)
\set n random(1, :agents)
SELECT reservation_id AS rid FROM bench.floor_reserve((SELECT id FROM bench.agents WHERE n = :n), 0.01, interval '10 minutes') \gset
SELECT ledger_id FROM bench.floor_settle(:rid, 0.01, 10, 5, 'm', 'p');
