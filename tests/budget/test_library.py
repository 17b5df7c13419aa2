"""The library as an application developer meets it (issue 9): one money type, agents by name or id everywhere,
results normalised, exceptions with structured fields, privilege errors that name the role, the async client
giving the same answers as the sync one, and Database.open() failing fast and clearly on an unreachable server."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo
from sigledger import (
    AsyncBudgetClient,
    AsyncDatabase,
    BudgetClient,
    BudgetGuard,
    CostRecord,
    CostTracker,
    Database,
    Ledger,
)
from sigledger.cli import main as cli_main
from sigledger.core.errors import BudgetExceeded, NotFound, PermissionDenied, Unavailable

from tests.budget.conftest import ledger_keys


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_floats_are_refused_everywhere_ints_accepted(admin_dsn: str) -> None:
    with Database(admin_dsn) as db:
        client = BudgetClient(db)
        with pytest.raises(TypeError, match=r"limit_usd: a float \(0.5\) is not an exact amount"):
            client.create_agent("money-f", 0.5)  # type: ignore[arg-type]
        agent = client.create_agent("money-i", 2)  # an int is exact
        with pytest.raises(TypeError, match="estimate_usd"):
            client.reserve(agent, 0.1, 60, "k")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="cost_usd"):
            CostRecord(agent_id=agent, model="m", provider="p", cost_usd=0.1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="str"):
            client.check_and_record(agent, "0.1")  # type: ignore[arg-type]
        guard = BudgetGuard(db)
        with pytest.raises(TypeError, match="actual_usd"), guard.reserve(agent, 1) as r:
            r.set_cost(0.003, model="m", provider="p")  # type: ignore[arg-type]
        assert r.outcome == "released"  # the TypeError inside the block released the hold
        assert CostRecord(agent_id=agent, model="m", provider="p", cost_usd=1).cost_usd == Decimal(1)


def test_results_are_normalised(admin_dsn: str) -> None:
    with Database(admin_dsn) as db:
        client = BudgetClient(db)
        agent = client.create_agent("norm", Decimal("10.00"))
        status = client.status(agent)[0]
        assert str(status["spent_usd"]) == "0" and str(status["limit_usd"]) == "10"
        row = client.check_and_record(agent, Decimal("0.0400"))
        assert str(row["remaining_usd"]) == "9.96"


def test_agents_by_name_or_id_everywhere(admin_dsn: str, db_dsn: str, tmp_path: Path) -> None:
    with Database(admin_dsn) as db:
        client = BudgetClient(db)
        agent_id = client.create_agent("by-name")
        client.set_budget("by-name", Decimal(5))
        guard = BudgetGuard(db)
        with guard.reserve("by-name", Decimal(1)) as r:
            r.set_cost(Decimal("0.5"), model="m", provider="p")
        with guard.reserve(agent_id, Decimal(1)) as r2:
            r2.set_cost(Decimal("0.25"), model="m", provider="p")
        assert client.status("by-name") == client.status(agent_id)
        assert client.status("by-name")[0]["spent_usd"] == Decimal("0.75")
        Ledger(db).record_cost(
            CostRecord(
                agent_id="by-name", model="m", provider="p", cost_usd=Decimal(1), idempotency_key="named-1"
            )
        )
        with pytest.raises(NotFound, match="unknown agent 'nobody'"):
            client.status("nobody")
        # through the tracker: a known name is written, an unknown one is dead-lettered (visible), not
        # quarantined out of the application's sight
        tracker = CostTracker(db, tmp_path / "spool", flush_interval=3600).start()
        tracker.record(
            CostRecord(
                agent_id="by-name", model="m", provider="p", cost_usd=Decimal(1), idempotency_key="named-2"
            )
        )
        tracker.record(
            CostRecord(
                agent_id="nobody", model="m", provider="p", cost_usd=Decimal(1), idempotency_key="named-3"
            )
        )
        tracker.close()
    assert sorted(ledger_keys(db_dsn, "named-")) == ["named-1", "named-2"]
    dead = [json.loads(line) for line in tracker.rejected_path.read_text().splitlines()]
    assert [(d["record"]["idempotency_key"], d["error"], d["sqlstate"]) for d in dead] == [
        ("named-3", "NotFound", "P0002")
    ]


def test_budget_exceeded_carries_structured_fields(admin_dsn: str) -> None:
    with Database(admin_dsn) as db:
        client = BudgetClient(db)
        agent = client.create_agent("fields", Decimal(1), period="daily")
        with pytest.raises(BudgetExceeded) as exc, BudgetGuard(db).reserve("fields", Decimal(2)):
            pass
    err = exc.value
    assert (err.remaining_usd, err.level, err.sqlstate) == (Decimal(1), "agent", "SLB01")
    assert str(err.remaining_usd) == "1"
    assert isinstance(err.budget_id, int) and err.budget_id > 0
    assert (
        isinstance(err.period_start, dt.datetime)
        and err.period_start.date() == dt.datetime.now(dt.UTC).date()
    )
    assert agent


def test_privilege_errors_name_the_role(app_dsn: str, readonly_dsn: str) -> None:
    with Database(app_dsn) as db, pytest.raises(PermissionDenied) as exc:
        BudgetClient(db).create_agent("not-allowed")
    assert exc.value.sqlstate == "42501"
    assert exc.value.hint is not None and "sigledger_admin" in exc.value.hint
    assert "role create-login <login> --as admin" in exc.value.hint  # groups are NOLOGIN: a member login
    assert "sigledger_admin" in str(exc.value)
    with Database(readonly_dsn) as db, pytest.raises(PermissionDenied) as exc2:
        BudgetClient(db).reserve("00000000-0000-0000-0000-000000000000", Decimal(1), 60, "k")
    assert exc2.value.hint is not None and "sigledger_app" in exc2.value.hint
    with Database(app_dsn) as db, pytest.raises(PermissionDenied) as exc3:
        db.call("SELECT count(*) FROM sigledger.llm_cost_log")
    assert exc3.value.hint is not None and "private" in exc3.value.hint


def test_async_client_reads_the_same_as_the_sync_one(admin_dsn: str) -> None:
    with Database(admin_dsn) as db:
        BudgetClient(db).create_agent("async-read", Decimal(3))
        BudgetClient(db).check_and_record("async-read", Decimal("0.5"))
        expected = BudgetClient(db).status("async-read")

    async def main() -> list[dict[str, object]]:
        async with AsyncDatabase(admin_dsn) as adb:
            client = AsyncBudgetClient(adb)
            rows = await asyncio.gather(*(client.status("async-read") for _ in range(50)))
            assert all(r == rows[0] for r in rows)
            return rows[0]

    assert asyncio.run(main()) == expected


def test_open_against_an_unreachable_server_fails_with_one_clear_error() -> None:
    port = closed_port()
    db = Database(f"host=127.0.0.1 port={port} dbname=x user=x", connect_timeout=2)
    with pytest.raises(Unavailable) as exc:
        db.open()
    message = str(exc.value)
    assert f"127.0.0.1 port {port}" in message and "refused" in message, message
    assert (exc.value.host, exc.value.port) == ("127.0.0.1", str(port))
    assert db.closed

    async def main() -> None:
        with pytest.raises(Unavailable, match=f"port {port}"):
            await AsyncDatabase(f"host=127.0.0.1 port={port} dbname=x user=x", connect_timeout=2).open()

    asyncio.run(main())


def test_the_connect_timeout_follows_libpq_settings_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Database, AsyncDatabase and connect() wait as long as libpq would (the DSN's connect_timeout, else
    PGCONNECT_TIMEOUT), else 5 s; an explicit connect_timeout wins. The CLI relies on it (exit 69 after it)."""
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    base = "host=127.0.0.1 port=1 dbname=x user=x"
    assert Database(base).connect_timeout == 5
    assert AsyncDatabase(base + " connect_timeout=3").connect_timeout == 3
    assert Database(base + " connect_timeout=3", connect_timeout=2).connect_timeout == 2
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")
    assert Database(base).connect_timeout == 7
    assert Database(base + " connect_timeout=3").connect_timeout == 3
    assert Database(base).pool.kwargs["connect_timeout"] == 7  # what libpq is told too


def test_settings_changes_run_in_read_committed_whatever_the_session_default(admin_dsn: str) -> None:
    """set_budget of an existing budget, update_budget, set_budget_slices and reconcile_budgets(repair) refuse
    any level but READ COMMITTED (25000: under REPEATABLE READ or SERIALIZABLE their snapshot can miss a period
    created meanwhile). The clients and the CLI run them in READ COMMITTED even on a login whose
    default_transaction_isolation is another level (a DBA's setting)."""
    dsn = make_conninfo(admin_dsn, options="-c default_transaction_isolation=serializable")
    with Database(dsn) as db:
        row = db.call_one("SELECT current_setting('transaction_isolation') AS level")
        assert row is not None and row["level"] == "serializable"  # the session default applies elsewhere
        client = BudgetClient(db)
        agent = client.create_agent("rc-sync", 10, period="daily")  # a new budget: any level
        client.check_and_record(agent, Decimal(1))  # the current period exists
        budget_id = client.set_budget(agent, 20)
        client.update_budget(budget_id, 30)
        assert client.set_budget_slices(budget_id, 2) == 2
        client.reconcile(repair=True)
        status = client.status(agent)[0]
        assert (status["limit_usd"], status["spent_usd"]) == (Decimal(30), Decimal(1))
        team = client.create_group_budget("team", "rc-team", 100, period="daily")
        client.update_budget(team, 50)
    cli = CliRunner().invoke(cli_main, ["agent", "set-budget", "rc-sync", "--limit", "40", "--dsn", dsn])
    assert cli.exit_code == 0, cli.output

    async def main_async() -> None:
        async with AsyncDatabase(dsn) as adb:
            aclient = AsyncBudgetClient(adb)
            agent = await aclient.create_agent("rc-async", 10, period="daily")
            await aclient.check_and_record(agent, Decimal(1))
            budget_id = await aclient.set_budget(agent, 20)
            await aclient.update_budget(budget_id, 30)
            assert await aclient.set_budget_slices(budget_id, 2) == 2
            await aclient.reconcile(repair=True)
            assert (await aclient.status(agent))[0]["limit_usd"] == Decimal(30)

    asyncio.run(main_async())
    with Database(admin_dsn) as db:
        assert BudgetClient(db).status("rc-sync")[0]["limit_usd"] == Decimal(40)
