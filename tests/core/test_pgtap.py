"""Every pgTAP file under tests/sql/ is one pytest item, run by pg_prove against a fresh clone of the
template. A failure shows pg_prove's output: the failing assertion with what it got and what it wanted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pytest_postgresql.executors import PostgreSQLExecutor

from tests.conftest import clone_database, drop_database

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
FILES = sorted(SQL_DIR.glob("*.sql"))


def test_there_are_pgtap_files() -> None:
    assert FILES, f"no pgTAP files in {SQL_DIR}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_pgtap_file(path: Path, pg: PostgreSQLExecutor, template_db: str) -> None:
    name = clone_database(pg, template_db, prefix="tap")
    try:
        res = subprocess.run(
            [
                "pg_prove",
                "--verbose",
                "--failures",
                "-h",
                pg.host,
                "-p",
                str(pg.port),
                "-U",
                pg.user,
                "-d",
                name,
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        drop_database(pg, name)
    output = res.stdout + res.stderr
    assert res.returncode == 0, f"pg_prove failed for {path.name}:\n{output}"
    assert "Result: PASS" in output, output
