"""Every isolationtester spec under tests/isolation/specs/ runs through pg_isolation_regress against a fresh
clone of the migrated template. Expected outputs show `<waiting ...>` where a session must block, so a spec
proves the interleaving, not only the final totals."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pytest_postgresql.executors import PostgreSQLExecutor

from tests.conftest import clone_database, drop_database

ISOLATION_DIR = Path(__file__).resolve().parent.parent / "isolation"
SPECS = sorted((ISOLATION_DIR / "specs").glob("*.spec"))


def pg_isolation_regress() -> Path:
    pgxs = subprocess.run(["pg_config", "--pgxs"], capture_output=True, text=True, check=True).stdout.strip()
    tool = Path(pgxs).parent.parent / "test" / "isolation" / "pg_isolation_regress"
    assert tool.is_file(), f"pg_isolation_regress not found at {tool} (install postgresql-client-15)"
    return tool


def test_there_are_specs() -> None:
    assert SPECS, f"no isolation specs in {ISOLATION_DIR / 'specs'}"


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_isolation_spec(spec: Path, pg: PostgreSQLExecutor, template_db: str, tmp_path: Path) -> None:
    name = clone_database(pg, template_db, prefix="iso")
    try:
        res = subprocess.run(
            [
                str(pg_isolation_regress()),
                "--use-existing",
                f"--dbname={name}",
                f"--host={pg.host}",
                f"--port={pg.port}",
                f"--user={pg.user}",
                f"--inputdir={ISOLATION_DIR}",
                f"--outputdir={tmp_path}",
                spec.stem,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        drop_database(pg, name)
    diffs = tmp_path / "regression.diffs"
    detail = diffs.read_text() if diffs.exists() else ""
    assert res.returncode == 0, f"{spec.name} failed:\n{res.stdout}\n{res.stderr}\n{detail}"
