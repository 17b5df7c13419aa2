"""`down --to` then `up` returns the real migrations to the same schema (pg_dump --schema-only compared, with the
clock taken out of the ledger's partitions: tests/migrate/dumps.py)."""

from __future__ import annotations

import re

import psycopg
import pytest
from sigledger.core.paths import migrations_dir
from sigledger.migrate.files import discover_migrations

from tests.migrate.dumps import built_a_month_earlier, raw_schema_dump, schema_dump, sweep_of_the_next_month
from tests.migrate.helpers import cli_process, history


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


@pytest.mark.parametrize("clock", ["template of the month before", "sweep of the next month"])
def test_down_then_up_across_a_month_boundary(db_dsn: str, clock: str) -> None:
    """The start of a month passes between the template's migration and the test (the template's ledger
    partitions are those of the month before), or between `up` and the last dump (the sweep has made the
    partition of the month that came within reach): the same schema all the same."""
    if clock == "template of the month before":
        built_a_month_earlier(db_dsn)
    before, raw = schema_dump(db_dsn), raw_schema_dump(db_dsn)
    result = cli_process(["migrate", "down", "--to", "V4_003", "--force", "--dsn", db_dsn])
    assert result.returncode == 0, result.stdout + result.stderr
    result = cli_process(["migrate", "up", "--dsn", db_dsn])
    assert result.returncode == 0, result.stdout + result.stderr
    if clock == "sweep of the next month":
        sweep_of_the_next_month(db_dsn)
    assert raw_schema_dump(db_dsn) != raw  # what the clock changes, which the plain dumps compared
    assert schema_dump(db_dsn) == before
    verify = cli_process(["migrate", "verify", "--dsn", db_dsn])
    assert verify.returncode == 0, verify.stdout


def test_the_dump_comparison_ignores_the_clock_but_not_a_lost_object(db_dsn: str) -> None:
    """What schema_dump takes out is the clock only: a partition the sweep adds compares equal, and each of
    these changes between two dumps still shows."""
    before = schema_dump(db_dsn)
    sweep_of_the_next_month(db_dsn)
    assert schema_dump(db_dsn) == before
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        monthly = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass AND c.relname ~ '^llm_cost_log_p[0-9]{6}$' "
                "ORDER BY 1"
            ).fetchall()
        ]
        assert len(monthly) >= 3, monthly
        for damage in (
            f"DROP TRIGGER llm_cost_log_append_only_truncate ON sigledger.{monthly[-1]}",  # one monthly partition's
            f"ALTER TABLE sigledger.{monthly[0]} DROP CONSTRAINT {monthly[0]}_pkey",
            f"DROP TABLE sigledger.{monthly[1]}",  # a gap between two monthly partitions
            "DROP TRIGGER llm_cost_log_append_only_truncate ON sigledger.llm_cost_log_legacy",
            "ALTER TABLE sigledger.llm_cost_log_default DROP CONSTRAINT llm_cost_log_default_pkey",
            "DROP INDEX sigledger.llm_cost_log_created_at_id_idx",  # the parent's, with every partition's
            "DROP INDEX sigledger.idx_entity_aliases_alias_name",
        ):
            conn.execute(damage)
            after = schema_dump(db_dsn)
            assert after != before, damage
            before = after


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
