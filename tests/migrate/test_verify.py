"""`migrate verify` checks what it claims: repeatable files applied at their checksums with their functions in
place, ownership, privileges exactly as 900_grants.sql's audience list says, roles as specified, indexes valid
and constraints validated. Each kind of damage below is one the runner's history alone cannot see."""

from __future__ import annotations

import psycopg
import pytest
from sigledger.migrate import Migrator

from tests.migrate.helpers import cli_process


@pytest.mark.parametrize(
    ("damage", "reported"),
    [
        ("DELETE FROM sigledger_meta.repeatable_history", "repeatable 900_grants.sql was never applied"),
        (
            "UPDATE sigledger_meta.repeatable_history SET checksum = 'x' WHERE name = '110_record_cost.sql'",
            "repeatable 110_record_cost.sql is applied at another checksum",
        ),
        (
            "DROP FUNCTION sigledger.cost_trends(integer)",
            "repeatable 110_record_cost.sql: function sigledger.cost_trends is missing",
        ),
        (
            "ALTER TABLE sigledger.outbox OWNER TO postgres",
            "owner: TABLE sigledger.outbox belongs to postgres",
        ),
        (
            "GRANT SELECT ON sigledger.budget TO sigledger_app",
            "privilege: sigledger_app has SELECT on sigledger.budget",
        ),
        ("GRANT SELECT ON sigledger.budget TO PUBLIC", "privilege: public has SELECT on sigledger.budget"),
        (
            "GRANT EXECUTE ON FUNCTION sigledger.reconcile_budgets(boolean) TO sigledger_app",
            "privilege: unexpected EXECUTE on sigledger.reconcile_budgets(boolean) for sigledger_app",
        ),
        (
            "REVOKE EXECUTE ON FUNCTION sigledger.cost_trends(integer) FROM sigledger_readonly",
            "privilege: missing EXECUTE on sigledger.cost_trends(integer) for sigledger_readonly",
        ),
        ("ALTER ROLE sigledger_readonly LOGIN", "roles: sigledger_readonly can log in"),
        (
            "ALTER TABLE sigledger.signals ADD CONSTRAINT signals_probe CHECK (source <> '') NOT VALID",
            "constraint signals_probe on sigledger.signals is not validated",
        ),
    ],
)
def test_verify_reports_damage_the_history_cannot_see(db_dsn: str, damage: str, reported: str) -> None:
    assert Migrator(db_dsn).verify() == []
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(damage.encode())
    try:
        problems = Migrator(db_dsn).verify()
        assert any(reported in p for p in problems), problems
    finally:
        if "ROLE" in damage:  # cluster-wide: put it back for the other tests
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                conn.execute("ALTER ROLE sigledger_readonly NOLOGIN")


def test_verify_command_exits_4_and_prints_each_problem(db_dsn: str) -> None:
    """Exit 4 (the schema needs repair), the shared status of sigledger.cli.exit_codes."""
    clean = cli_process(["migrate", "verify", "--dsn", db_dsn])
    assert clean.returncode == 0 and "verified" in clean.stdout, clean.stdout
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM sigledger_meta.repeatable_history")
    result = cli_process(["migrate", "verify", "--dsn", db_dsn])
    assert result.returncode == 4 and "repeatable 900_grants.sql was never applied" in result.stdout, (
        result.stdout
    )


def test_verify_reports_a_login_that_changed_its_own_settings(db_dsn: str) -> None:
    """A member login may `ALTER ROLE <itself> SET statement_timeout = 0`, and that persists for every later
    session of the login (docs/deploying.md, Roles and logins): verify names each login of a sigledger group
    whose settings differ from what `role create-login` sets."""
    from psycopg.conninfo import make_conninfo
    from sigledger.migrate import roles

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        roles.create_login(conn, "vl_web", "app")
    try:
        assert not [p for p in Migrator(db_dsn).verify() if "vl_web" in p]
        with psycopg.connect(make_conninfo(db_dsn, user="vl_web"), autocommit=True) as web:
            web.execute("ALTER ROLE CURRENT_USER SET statement_timeout = 0")
            web.execute("ALTER ROLE CURRENT_USER RESET lock_timeout")
        with psycopg.connect(make_conninfo(db_dsn, user="vl_web"), autocommit=True) as web:
            assert web.execute("SHOW statement_timeout").fetchone() == ("0",)  # it persisted
        found = [p for p in Migrator(db_dsn).verify() if "vl_web" in p]
        assert found == [
            "login vl_web (sigledger_app): lock_timeout is not set, role create-login sets 10s "
            "(fix: sigledger role create-login vl_web --as app)",
            "login vl_web (sigledger_app): statement_timeout is 0, role create-login sets 30s "
            "(fix: sigledger role create-login vl_web --as app)",
        ], found
    finally:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE vl_web")
