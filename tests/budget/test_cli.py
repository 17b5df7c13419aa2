"""The agent, cost and budget command groups against a real database: results, and for bad arguments a clear
one-line message with a non-zero exit, never a traceback."""

from __future__ import annotations

import json
from decimal import Decimal

import psycopg
import pytest
from click.testing import CliRunner, Result
from sigledger.cli import main


def run(dsn: str, *args: str) -> Result:
    argv = list(args)
    at = argv.index("--") if "--" in argv else len(argv)  # options before a "--" (negative numbers after it)
    return CliRunner().invoke(main, [*argv[:at], "--dsn", dsn, *argv[at:]], catch_exceptions=False)


def test_agent_cost_budget_commands(db_dsn: str) -> None:
    created = run(db_dsn, "agent", "create", "cli-agent", "--limit", "1.00", "--alert", "0.5")
    assert created.exit_code == 0, created.output
    agent_id = created.output.strip()
    assert run(db_dsn, "agent", "set-budget", "cli-agent", "--grace", "0.10").exit_code == 0

    reserved = run(db_dsn, "budget", "reserve", "cli-agent", "0.60", "--key", "cli-r1", "--json")
    assert reserved.exit_code == 0, reserved.output
    reservation = json.loads(reserved.output)
    assert Decimal(reservation["remaining_usd"]) == Decimal("0.50")  # 1.00 x 1.10 - 0.60

    denied = run(db_dsn, "budget", "reserve", agent_id, "0.60")
    assert denied.exit_code == 1
    assert "error [SLB01]" in denied.output and "remaining_usd=0.5" in denied.output

    settled = run(
        db_dsn,
        "budget",
        "settle",
        str(reservation["reservation_id"]),
        "--cost",
        "0.55",
        "--model",
        "m",
        "--provider",
        "p",
        "--json",
    )
    assert settled.exit_code == 0, settled.output
    assert Decimal(json.loads(settled.output)["actual_usd"]) == Decimal("0.55")

    assert (
        run(
            db_dsn,
            "cost",
            "record",
            "--agent",
            "cli-agent",
            "--model",
            "m",
            "--provider",
            "p",
            "--cost",
            "0.05",
            "--key",
            "cli-c1",
        ).exit_code
        == 0
    )
    status = run(db_dsn, "agent", "status", "cli-agent", "--json")
    assert Decimal(json.loads(status.output)[0]["spent_usd"]) == Decimal("0.60")

    second = run(db_dsn, "budget", "reserve", "cli-agent", "0.10", "--json")
    rid = str(json.loads(second.output)["reservation_id"])
    assert run(db_dsn, "budget", "release", rid).output.strip() == "released"
    assert run(db_dsn, "budget", "expire").output.strip() == "0"
    recon = run(db_dsn, "budget", "reconcile", "--json")
    assert recon.exit_code == 0 and json.loads(recon.output) == []

    trends = run(db_dsn, "cost", "trends", "--days", "3", "--json")
    days = json.loads(trends.output)
    assert len(days) == 3 and Decimal(days[-1]["total_usd"]) == Decimal("0.60")
    sweep = run(db_dsn, "budget", "sweep", "--every", "0.1", "--iterations", "2")
    assert sweep.exit_code == 0 and len(sweep.output.strip().splitlines()) == 2
    assert [json.loads(line)["alerts_fired"] for line in sweep.output.strip().splitlines()] == [0, 0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("cost", "trends", "--days", "0"), "error [22023]: days must be between 1 and 365, got 0"),
        (("cost", "trends", "--days", "366"), "error [22023]: days must be between 1 and 365, got 366"),
        (("cost", "trends", "--days", "7; DROP TABLE x"), "'7; DROP TABLE x' is not a valid integer"),
        (
            ("cost", "record", "--agent", "cli-bad", "--model", "m", "--provider", "p", "--cost", "NaN"),
            "error [22023]: cost_usd must be a finite number, got NaN",
        ),
        (
            ("cost", "record", "--agent", "cli-bad", "--model", "m", "--provider", "p", "--cost", "1e309"),
            "error [22003]: cost_usd must be at most 1000000",
        ),
        (
            ("cost", "record", "--agent", "cli-bad", "--model", "m", "--provider", "p", "--cost", "abc"),
            "'abc' is not a number",
        ),
        (
            ("budget", "reserve", "--", "cli-bad", "-Infinity"),
            "error [22023]: estimate_usd must be a finite number",
        ),
        (("budget", "settle", "999999", "--cost", "0.1"), "error [P0002]: unknown reservation 999999"),
        (("agent", "status", "nobody"), "error [P0002]: unknown agent 'nobody'"),
        (
            ("agent", "create", "cli-x", "--limit", "Infinity"),
            "error [22023]: limit_usd must be a finite number",
        ),
        (("agent", "create", "cli-y", "--period", "hourly"), "Invalid value for '--period'"),
    ],
)
def test_bad_arguments_give_a_message_and_non_zero_exit(
    db_dsn: str, args: tuple[str, ...], message: str
) -> None:
    assert run(db_dsn, "agent", "create", "cli-bad", "--limit", "10").exit_code == 0
    result = run(db_dsn, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_reconcile_exit_status_reports_drift(db_dsn: str) -> None:
    assert run(db_dsn, "agent", "create", "cli-drift", "--limit", "10").exit_code == 0
    assert (
        run(
            db_dsn, "cost", "record", "--agent", "cli-drift", "--model", "m", "--provider", "p", "--cost", "1"
        ).exit_code
        == 0
    )
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("UPDATE sigledger.budget_spend SET spent_usd = spent_usd + 2")  # drift, as the owner
    assert run(db_dsn, "budget", "reconcile").exit_code == 3
    assert run(db_dsn, "budget", "reconcile", "--repair").exit_code == 0
    assert run(db_dsn, "budget", "reconcile").exit_code == 0
