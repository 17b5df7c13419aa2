"""Views that filter rows are security barriers (issue 11, item 4): a caller's cheap function in the WHERE
clause runs only on the rows the view lets through, never on the rows it filters out.

The attack, as the app role: a pg_temp function with a tiny COST that reports its argument (RAISE NOTICE).
Without security_barrier the planner runs the cheapest qual first, below the view's own filter, so the
function sees every row of the table."""

from __future__ import annotations

import psycopg
import pytest

LEAK = """
CREATE FUNCTION pg_temp.leak(p_value anyelement) RETURNS boolean
LANGUAGE plpgsql COST 0.0000001 AS $$
BEGIN
    RAISE NOTICE 'leaked %', p_value;
    RETURN true;
END
$$"""


def _leaked(app_dsn: str, query: str) -> tuple[list[str], list[tuple]]:
    notices: list[str] = []
    with psycopg.connect(app_dsn, autocommit=True) as app:
        app.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        app.execute(LEAK)
        rows = app.execute(query).fetchall()
    return notices, rows


@pytest.fixture
def ledger_rows(conn: psycopg.Connection) -> None:
    """Two ledger rows of one agent: one whose client cost agrees with the price table (the view
    cost_price_disagreement filters it out), one that disagrees; two settled reservations: one within its
    estimate (budget_overruns filters it out), one over it."""
    agent = conn.execute("SELECT sigledger.create_agent('leak-agent', 100)").fetchone()[0]
    conn.execute("SELECT sigledger.add_model_price('p', 'm', 1, 1, now() - interval '1 hour')")
    # 1000 + 1000 tokens at $1/Mtok = $0.002
    conn.execute("SELECT sigledger.record_cost('hidden-agrees', %s, 'm', 'p', 1000, 1000, 0.002)", (agent,))
    conn.execute("SELECT sigledger.record_cost('shown-disagrees', %s, 'm', 'p', 1000, 1000, 0.5)", (agent,))
    for key, actual in (("hidden-within", 1), ("shown-over", 3)):
        rid = conn.execute(
            "SELECT reservation_id FROM sigledger.reserve_budget(%s, 2, p_idempotency_key => %s)",
            (agent, key),
        ).fetchone()[0]
        conn.execute("SELECT sigledger.settle_budget(%s, %s)", (rid, actual))


def test_every_view_is_a_security_barrier(conn: psycopg.Connection) -> None:
    plain = [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'sigledger'::regnamespace AND c.relkind = 'v'"
            " AND NOT coalesce('security_barrier=true' = ANY (c.reloptions), false) ORDER BY 1"
        ).fetchall()
    ]
    assert plain == [], f"views without security_barrier: {plain}"


@pytest.mark.usefixtures("ledger_rows")
def test_cost_price_disagreement_does_not_leak(app_dsn: str) -> None:
    notices, rows = _leaked(
        app_dsn,
        "SELECT idempotency_key FROM sigledger.cost_price_disagreement WHERE pg_temp.leak(idempotency_key)",
    )
    assert rows == [("shown-disagrees",)]
    assert notices == ["leaked shown-disagrees"], notices


@pytest.mark.usefixtures("ledger_rows")
def test_budget_overruns_does_not_leak(conn: psycopg.Connection, app_dsn: str) -> None:
    over = conn.execute(
        "SELECT id FROM sigledger.budget_reservation WHERE idempotency_key = 'shown-over'"
    ).fetchone()[0]
    notices, rows = _leaked(
        app_dsn, "SELECT reservation_id FROM sigledger.budget_overruns WHERE pg_temp.leak(reservation_id)"
    )
    assert rows == [(over,)]
    assert notices == [f"leaked {over}"], notices
