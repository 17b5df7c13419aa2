"""Real logins as each role: what it may do, and what it is refused (42501)."""

from __future__ import annotations

import psycopg
import pytest
from pytest_postgresql.executors import PostgreSQLExecutor

from tests.conftest import LOGINS, make_dsn


def _login(pg: PostgreSQLExecutor, db_name: str, role: str) -> psycopg.Connection:
    """A real login as a member of the group `role` (sigledger_app -> the app login, ...)."""
    return psycopg.connect(make_dsn(pg, db_name, LOGINS[role.removeprefix("sigledger_")]), autocommit=True)


def test_graph_worker_role_claims_and_acks_but_touches_nothing_else(
    pg: PostgreSQLExecutor, db_name: str, conn: psycopg.Connection
) -> None:
    entity = conn.execute("SELECT sigledger.create_entity(p_name => 'Acme')").fetchone()
    assert entity is not None
    with _login(pg, db_name, "sigledger_graph") as graph:
        claimed = graph.execute("SELECT id FROM sigledger._graph_claim(p_limit => 100)").fetchall()
        assert claimed, "the entity's outbox event is claimable by the worker role"
        graph.execute("SELECT sigledger._graph_ack(p_ids => %s::bigint[])", ([r[0] for r in claimed],))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            graph.execute("SELECT * FROM sigledger.outbox")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            graph.execute("SELECT sigledger.find_agent(p_name => 'x')")
    left = conn.execute("SELECT count(*) FROM sigledger.outbox").fetchone()
    assert left is not None and left[0] == 0


def test_admin_sets_budgets_app_cannot(pg: PostgreSQLExecutor, db_name: str) -> None:
    with _login(pg, db_name, "sigledger_admin") as admin:
        row = admin.execute(
            "SELECT sigledger.create_agent(p_name => 'roles-agent', p_limit_usd => 10::numeric)"
        ).fetchone()
        assert row is not None
        agent = row[0]
        # the admin role inherits the application's API
        admin.execute("SELECT sigledger.budget_status(p_agent_id => %s::uuid)", (agent,)).fetchall()
    with _login(pg, db_name, "sigledger_app") as app:
        app.execute("SELECT sigledger.budget_status(p_agent_id => %s::uuid)", (agent,)).fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(
                "SELECT sigledger.set_budget(p_agent_id => %s::uuid, p_limit_usd => 1000000::numeric)",
                (agent,),
            )


@pytest.mark.parametrize("role", ["sigledger_app", "sigledger_readonly"])
def test_every_view_is_readable_by_the_reading_roles(
    pg: PostgreSQLExecutor, db_name: str, conn: psycopg.Connection, role: str
) -> None:
    """A view that calls an internal function fails for these roles even though SELECT is granted."""
    views = [
        r[0]
        for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c "
            "WHERE c.relnamespace = 'sigledger'::regnamespace AND c.relkind IN ('v', 'm') ORDER BY 1"
        ).fetchall()
    ]
    assert views
    failures = []
    with _login(pg, db_name, role) as reader:
        for view in views:
            try:
                reader.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()
            except psycopg.Error as exc:
                failures.append(f"{view}: {exc.sqlstate} {str(exc).strip()}")
    assert not failures, failures


def test_budget_overview_period_start_matches_the_budget_functions(conn: psycopg.Connection) -> None:
    for period in ("none", "daily", "weekly", "monthly"):
        conn.execute(
            "SELECT sigledger.create_agent(p_name => %s, p_limit_usd => 5::numeric, p_period => %s)",
            (f"overview-{period}", period),
        )
    rows = conn.execute(
        "SELECT o.period, o.period_start, sigledger._period_start(o.period, now()) "
        "FROM sigledger.budget_overview o "
        "WHERE o.agent_id IN (SELECT id FROM sigledger.agent_registry WHERE name LIKE 'overview-%')"
    ).fetchall()
    assert {r[0] for r in rows} == {"none", "daily", "weekly", "monthly"}
    assert all(r[1] == r[2] for r in rows), rows


GROUPS = ("sigledger_app", "sigledger_readonly", "sigledger_admin", "sigledger_graph")


def test_groups_cannot_log_in_and_carry_no_settings(
    pg: PostgreSQLExecutor, db_name: str, conn: psycopg.Connection
) -> None:
    """Settings on a group reach nobody (a role's settings apply at login as that role, and a member may SET
    ROLE to its group anyway): the groups are NOLOGIN and carry none, so nothing can depend on them."""
    rows = conn.execute(
        """SELECT r.rolname, r.rolcanlogin,
                  (SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase = 0)
             FROM pg_roles r WHERE r.rolname = ANY (%s) ORDER BY 1""",
        (list(GROUPS),),
    ).fetchall()
    assert rows == [(g, False, None) for g in sorted(GROUPS)]
    for group in GROUPS:
        with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
            psycopg.connect(make_dsn(pg, db_name, group)).close()


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        (
            "app",
            {
                "statement_timeout": "30s",
                "lock_timeout": "10s",
                "idle_in_transaction_session_timeout": "1min",
            },
        ),
        (
            "readonly",
            {
                "statement_timeout": "1min",
                "idle_in_transaction_session_timeout": "1min",
                "default_transaction_read_only": "on",
            },
        ),
        (
            "admin",
            {
                "statement_timeout": "5min",
                "lock_timeout": "10s",
                "idle_in_transaction_session_timeout": "1min",
            },
        ),
        ("graph", {"statement_timeout": "1min", "idle_in_transaction_session_timeout": "1min"}),
    ],
)
def test_a_login_made_by_create_login_carries_the_timeouts(
    pg: PostgreSQLExecutor, db_name: str, conn: psycopg.Connection, group: str, expected: dict[str, str]
) -> None:
    """`sigledger role create-login NAME --as GROUP` (a real process), then a real login as NAME: the server
    applies the timeouts of the login itself."""
    from tests.migrate.helpers import cli_process

    name = f"login_{group}_{db_name}"
    try:
        made = cli_process(["role", "create-login", name, "--as", group, "--dsn", make_dsn(pg, db_name)])
        assert made.returncode == 0, made.stderr
        with psycopg.connect(make_dsn(pg, db_name, name), autocommit=True) as login:
            shown = {key: login.execute(f"SHOW {key}").fetchone()[0] for key in expected}  # type: ignore[index]
            assert shown == expected
            member = login.execute("SELECT pg_has_role(current_user, %s, 'USAGE')", (f"sigledger_{group}",))
            assert member.fetchone() == (True,)
    finally:
        conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def test_every_login_that_calls_the_api_has_a_statement_timeout(pg: PostgreSQLExecutor, db_name: str) -> None:
    for login in LOGINS.values():
        with psycopg.connect(make_dsn(pg, db_name, login)) as session:
            assert session.execute("SHOW statement_timeout").fetchone() != ("0",), login
