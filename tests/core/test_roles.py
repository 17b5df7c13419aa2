"""Real logins as each role: what it may do, and what it is refused (42501)."""

from __future__ import annotations

import psycopg
import pytest
from pytest_postgresql.executors import PostgreSQLExecutor

from tests.conftest import make_dsn


def _login(pg: PostgreSQLExecutor, db_name: str, role: str) -> psycopg.Connection:
    return psycopg.connect(make_dsn(pg, db_name, role), autocommit=True)


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
