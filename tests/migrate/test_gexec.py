"""A \\gexec query (files.py, executor.py) only lists the statements to run: it runs in a READ ONLY transaction,
so a query that writes fails before writing anything, and its re-runs (the query is its step's resume point)
write nothing either (the review of V8_101: a data-modifying query wrote a row at every failed run)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sigledger.core.errors import MigrationError
from sigledger.migrate import Migrator


def _migrations(tmp_path: Path, query: str) -> Migrator:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (tmp_path / "functions").mkdir()
    (migrations / "V1__schema.sql").write_text(
        "CREATE SCHEMA fx;\nCREATE TABLE fx.t (a int);\nCREATE SEQUENCE fx.s;\n"
    )
    (migrations / "V2__gexec.sql").write_text(f"-- sigledger:no-transaction\n{query}\n\\gexec\n")
    return Migrator("", migrations=migrations, functions=tmp_path / "functions")


@pytest.mark.parametrize(
    ("query", "sqlstate"),
    [
        ("WITH w AS (INSERT INTO fx.t VALUES (1) RETURNING a) SELECT 'SELECT 1/0' FROM w", "25006"),
        ("SELECT 'SELECT 1/0' FROM fx.t, nextval('fx.s')", "25006"),
        ("SELECT 'SELECT 1' FROM fx.t FOR UPDATE", "25006"),
        ("CREATE INDEX CONCURRENTLY t_a_idx ON fx.t (a)", "25006"),
    ],
)
def test_a_gexec_query_that_writes_fails_and_writes_nothing(
    empty_db_dsn: str, tmp_path: Path, query: str, sqlstate: str
) -> None:
    runner = _migrations(tmp_path, query)
    runner.dsn = empty_db_dsn
    for _ in range(3):  # the step is its own resume point: each run runs the query again
        with pytest.raises(MigrationError) as failure:
            runner.up()
        assert failure.value.sqlstate == sqlstate
    with psycopg.connect(empty_db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM fx.t").fetchone() == (0,)
        assert conn.execute("SELECT last_value, is_called FROM fx.s").fetchone() == (1, False)
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'fx'").fetchone() == (0,)


def test_a_gexec_query_that_reads_runs_its_statements(empty_db_dsn: str, tmp_path: Path) -> None:
    runner = _migrations(
        tmp_path, "SELECT format('INSERT INTO fx.t VALUES (%s)', g) FROM generate_series(1, 3) g"
    )
    runner.dsn = empty_db_dsn
    runner.up()
    with psycopg.connect(empty_db_dsn) as conn:
        assert conn.execute("SELECT array_agg(a ORDER BY a) FROM fx.t").fetchone() == ([1, 2, 3],)
