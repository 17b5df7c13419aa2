"""Every code block of docs/quickstart.md is run, in order, against a fresh empty database (issue 9).

- ``sh`` blocks run in bash with the virtualenv's bin first on PATH and SIGLEDGER_DSN set to the database as the
  deployer (the superuser here). One substitution: ``pip install -e .`` runs as
  ``pip install -e . --dry-run --no-deps --no-build-isolation`` (it resolves and builds the package's metadata
  from the checkout; a real install would replace the package under test in the running virtualenv).
- ``sql`` blocks run with psql (ON_ERROR_STOP), as the role their first line names (``-- as <role>``; "the
  deployer" = the superuser).
- ``python`` blocks run each in a fresh interpreter with SIGLEDGER_DSN naming the role of their first line
  (``# as <role>``), in one working folder (the spool folder of the examples lives there).

The two login roles the page creates are cluster-wide: they are dropped before and after the run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pytest_postgresql.executors import PostgreSQLExecutor

from tests.conftest import admin_connect, make_dsn

ROOT = Path(__file__).resolve().parent.parent.parent
PAGE = ROOT / "docs" / "quickstart.md"
LOGINS = ("support_service", "budget_owner")
BLOCK = re.compile(r"^```(?P<lang>\w+)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    return [(m["lang"], m["code"]) for m in BLOCK.finditer(PAGE.read_text())]


def drop_logins(pg: PostgreSQLExecutor) -> None:
    with admin_connect(pg) as conn:
        for role in LOGINS:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def logins(pg: PostgreSQLExecutor) -> Iterator[None]:
    drop_logins(pg)
    yield
    drop_logins(pg)


def role_of(code: str, comment: str) -> str:
    first = code.splitlines()[0]
    match = re.match(rf"{re.escape(comment)} as (?P<role>.+)$", first)
    assert match, f"a quickstart block must start with '{comment} as <role>': {first!r}"
    role = match["role"].strip()
    return "" if role == "the deployer" else role


def test_every_quickstart_block_runs(
    pg: PostgreSQLExecutor, empty_db_dsn: str, logins: None, tmp_path: Path
) -> None:
    found = blocks()
    assert {lang for lang, _ in found} == {"sh", "sql", "python"}, found
    dbname = psycopg.conninfo.conninfo_to_dict(empty_db_dsn)["dbname"]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "harness"), env.get("PYTHONPATH", "")])
    for i, (lang, code) in enumerate(found, 1):
        if lang == "sh":
            script = code.replace(
                "pip install -e .", "pip install -q -e . --dry-run --no-deps --no-build-isolation"
            )
            run = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=ROOT,
                env={**env, "SIGLEDGER_DSN": empty_db_dsn},
                capture_output=True,
                text=True,
                timeout=300,
            )
        elif lang == "sql":
            dsn = make_dsn(pg, dbname, role_of(code, "--") or None)
            run = subprocess.run(
                ["psql", dsn, "-X", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                input=code,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        else:
            dsn = make_dsn(pg, dbname, role_of(code, "#") or None)
            run = subprocess.run(
                [sys.executable, "-c", code],
                cwd=tmp_path,
                env={**env, "SIGLEDGER_DSN": dsn},
                capture_output=True,
                text=True,
                timeout=300,
            )
        assert run.returncode == 0, (
            f"block {i} ({lang}) failed:\n{code}\n--- stdout\n{run.stdout}\n--- stderr\n{run.stderr}"
        )
        if i == 1:
            assert "up to date" in run.stdout.lower() or run.stdout, run.stdout
    # what the page did, seen from the database: every call settled or recorded, nothing held
    with psycopg.connect(empty_db_dsn) as conn:
        calls, spent = conn.execute(
            "SELECT count(*), sum(cost_usd) FROM sigledger.llm_cost_log l JOIN sigledger.agent_registry a"
            " ON a.id = l.agent_id WHERE a.name = 'support-bot'"
        ).fetchone()
        held = conn.execute(
            "SELECT reserved_usd FROM sigledger.budget_status(sigledger.find_agent('support-bot'))"
        ).fetchone()
    assert calls == 1 + 20 + 100 + 2 and held == (0,), (calls, spent, held)
