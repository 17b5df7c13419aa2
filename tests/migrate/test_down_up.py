"""`down --to` then `up` returns the real migrations to the same schema (pg_dump --schema-only compared)."""

from __future__ import annotations

import re
import subprocess

import psycopg
import pytest
from sigledger.core.paths import migrations_dir
from sigledger.migrate.files import discover_migrations

from tests.migrate.helpers import cli_process, history


def schema_dump(dsn: str) -> str:
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--schema=sigledger", dsn], capture_output=True, text=True, check=True
    ).stdout
    lines = [
        line for line in out.splitlines() if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict"))
    ]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _privileges(dsn: str) -> list[tuple[str, ...]]:
    """What the app and read-only roles may do (pg_dump -n shows grants, this double-checks functions)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            """SELECT p.oid::regprocedure::text, r.rolname,
                      has_function_privilege(r.oid, p.oid, 'EXECUTE')::text
                 FROM pg_proc p CROSS JOIN pg_roles r
                WHERE p.pronamespace = 'sigledger'::regnamespace
                  AND r.rolname IN ('sigledger_app', 'sigledger_readonly', 'public')
                ORDER BY 1, 2"""
        ).fetchall()


@pytest.mark.parametrize("to", ["V3_009", "V3_000", "0"])
def test_down_to_then_up_restores_the_schema(db_dsn: str, to: str) -> None:
    before = schema_dump(db_dsn)
    privileges = _privileges(db_dsn)
    versions = [m.version for m in discover_migrations(migrations_dir())]
    assert [r[0] for r in history(db_dsn)] == versions

    # (--force: the template holds V5_001's configuration row, which a rollback below it drops)
    result = cli_process(["migrate", "down", "--to", to, "--force", "--dsn", db_dsn])
    assert result.returncode == 0, result.stdout + result.stderr
    limit = tuple(int(p) for p in re.split(r"[._]", to.lstrip("V")))
    kept = [v for v in versions if tuple(int(p) for p in re.split(r"[._]", v)) <= limit]
    assert [r[0] for r in history(db_dsn)] == kept
    if kept:
        assert schema_dump(db_dsn) != before
    else:
        with psycopg.connect(db_dsn) as conn:
            assert conn.execute("SELECT to_regnamespace('sigledger')").fetchone() == (None,)
    status = cli_process(["migrate", "status", "--dsn", db_dsn])
    assert status.returncode == 3, status.stdout

    result = cli_process(["migrate", "up", "--dsn", db_dsn])
    assert result.returncode == 0, result.stdout + result.stderr
    assert schema_dump(db_dsn) == before
    assert _privileges(db_dsn) == privileges
    assert [r[0] for r in history(db_dsn)] == versions
    assert cli_process(["migrate", "status", "--dsn", db_dsn]).returncode == 0
    verify = cli_process(["migrate", "verify", "--dsn", db_dsn])
    assert verify.returncode == 0, verify.stdout


def test_verify_reports_invalid_index_and_failing_verify_script(db_dsn: str) -> None:
    assert cli_process(["migrate", "verify", "--dsn", db_dsn]).returncode == 0
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sigledger.signals (source, external_id, occurred_at) "
            "VALUES ('a', '1', now()), ('a', '2', now())"
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY idx_signals_source_once ON sigledger.signals (source)"
            )
        conn.execute("DROP INDEX CONCURRENTLY sigledger.idx_entity_aliases_alias_name")
    result = cli_process(["migrate", "verify", "--dsn", db_dsn])
    assert result.returncode == 4  # exit_codes.REPAIR
    assert "INVALID index sigledger.idx_signals_source_once" in result.stdout
    assert "V3_008__critical_indexes.verify.sql" in result.stdout
    assert "idx_entity_aliases_alias_name" in result.stdout
