-- (f) the floor of any PL/pgSQL design: the bare record writes inside a function shaped like
-- check_and_record_budget (setup.sql: bench.floor_record)
\set n random(1, :agents)
SELECT allowed FROM bench.floor_record((SELECT id FROM bench.agents WHERE n = :n), 0.01);
