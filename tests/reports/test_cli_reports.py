"""The read-side commands an operator expects: agent list/status, budget tree/list/create-group, cost report and
top, reservation list, the quarantine, prices. Money is a fixed-point string in JSON, normalised like every amount
the library returns (sigledger.core.money), and right-aligned with one precision in tables; counts are integers;
--json on every read, --csv on reports."""

from __future__ import annotations

import csv
import io
import json
import re
from decimal import Decimal

import click
import psycopg
from psycopg.types.json import Jsonb
from sigledger.cli import main

from tests.reports.helpers import record, run

MONEY = re.compile(r"^-?\d+(\.\d*[1-9])?$")  # fixed-point, normalised: no exponent, no trailing zero


def _setup(dsn: str) -> dict[str, str]:
    org = run(dsn, "budget", "create-group", "org", "acme", "--limit", "100")
    assert org.exit_code == 0, org.output
    team = run(
        dsn,
        "budget",
        "create-group",
        "team",
        "research",
        "--limit",
        "10",
        "--parent-budget",
        org.output.strip(),
    )
    assert team.exit_code == 0, team.output
    for name, limit, parent in (("cli-a", "5", team.output.strip()), ("cli-b", "1", org.output.strip())):
        created = run(dsn, "agent", "create", name, "--limit", limit, "--parent-budget", parent)
        assert created.exit_code == 0, created.output
    return {"org": org.output.strip(), "team": team.output.strip()}


def test_agent_status_and_list_print_money_with_one_precision(db_dsn: str) -> None:
    _setup(db_dsn)
    record(db_dsn, "cli-a", "0.4", "s-1")
    record(db_dsn, "cli-a", "0.897992", "s-2")
    reserved = run(db_dsn, "budget", "reserve", "cli-a", "0.5", "--json")
    assert reserved.exit_code == 0, reserved.output

    status = json.loads(run(db_dsn, "agent", "status", "cli-a", "--json").output)
    agent = status[-1]
    assert agent["name"] == "cli-a" and agent["level"] == "agent"
    assert agent["open_reservations"] == 1 and agent["version"] >= 1  # integers, not strings
    assert agent["excess_usd"] == "0"  # never "0E-10"
    assert agent["spent_usd"] == "1.297992" and MONEY.match(agent["remaining_usd"])

    table = run(db_dsn, "agent", "status", "cli-a").output.splitlines()
    header, rows = table[0], table[1:]
    spent_at = header.index("spent_usd") + len("spent_usd")
    assert [r[spent_at - 8 : spent_at] for r in rows] == ["1.297992"] * 3  # right-aligned, six decimals
    assert "cli-a" in rows[-1] and rows[-1].rstrip().endswith("1")  # the name, the open reservation

    listed = json.loads(run(db_dsn, "agent", "list", "--json").output)
    assert [(a["name"], a["team"], a["org"]) for a in listed] == [
        ("cli-a", "research", "acme"),
        ("cli-b", None, "acme"),
    ]
    assert listed[0]["limit_usd"] == "5" and listed[0]["open_reservations"] == 1


def test_budget_tree_list_and_create_group(db_dsn: str) -> None:
    _setup(db_dsn)
    record(db_dsn, "cli-a", "4.5", "t-1")
    tree = run(db_dsn, "budget", "tree").output.splitlines()
    assert [line.split()[0] for line in tree[1:]] == ["acme", "cli-b", "research", "cli-a"]
    assert tree[4].startswith("    cli-a") and tree[4].rstrip().endswith("90.0%")
    near = json.loads(run(db_dsn, "budget", "list", "--near", "0.4", "--json").output)
    assert [(b["level"], b["name"], b["state"], b["used_ratio"]) for b in near] == [
        ("agent", "cli-a", "near", "0.9"),
        ("team", "research", "near", "0.45"),
    ]
    as_csv = list(csv.DictReader(io.StringIO(run(db_dsn, "budget", "tree", "--csv").output)))
    assert as_csv[0]["name"] == "acme" and as_csv[0]["spent_usd"] == "4.5"
    dup = run(db_dsn, "budget", "create-group", "team", "research", "--limit", "1")
    assert dup.exit_code == 1 and "[23505]" in dup.output


def test_agent_create_under_a_parent_without_a_limit_is_not_dropped_silently(db_dsn: str) -> None:
    """The agent lives under the team budget without a limit of its own (issue 13 built it; issue 15 asked)."""
    ids = _setup(db_dsn)
    created = run(db_dsn, "agent", "create", "cli-orphan", "--parent-budget", ids["team"])
    assert created.exit_code == 0, created.output
    status = json.loads(run(db_dsn, "agent", "status", "cli-orphan", "--json").output)
    assert ids["team"] in [str(r["budget_id"]) for r in status]
    listed = {a["name"]: a for a in json.loads(run(db_dsn, "agent", "list", "--json").output)}
    assert listed["cli-orphan"]["team"] == "research" and listed["cli-orphan"]["limit_usd"] is None


def test_cost_report_and_top_in_every_format(db_dsn: str) -> None:
    _setup(db_dsn)
    record(db_dsn, "cli-a", "1.25", "r-1", model="gpt")
    record(db_dsn, "cli-a", "0.50", "r-2", model="claude")
    record(db_dsn, "cli-b", "0.125", "r-3", model="claude")
    as_json = json.loads(run(db_dsn, "cost", "report", "--by", "team", "--by", "model", "--json").output)
    assert as_json[-1] == {
        "is_total": True,
        "team": None,
        "model": None,
        "spend_usd": "1.875",
        "calls": 3,
        "input_tokens": 0,
        "output_tokens": 0,
    }
    groups = {(r["team"], r["model"]): r["spend_usd"] for r in as_json[:-1]}
    assert groups == {
        ("research", "gpt"): "1.25",
        ("research", "claude"): "0.5",
        (None, "claude"): "0.125",
    }

    table = run(db_dsn, "cost", "report", "--by", "agent").output.splitlines()
    assert table[-1].split()[:2] == ["TOTAL", "1.875000"]
    width = len(table[0])
    assert all(len(line.rstrip()) <= width for line in table)

    as_csv = list(csv.DictReader(io.StringIO(run(db_dsn, "cost", "report", "--by", "model", "--csv").output)))
    assert [(r["is_total"], r["model"], r["spend_usd"], r["calls"]) for r in as_csv] == [
        ("false", "gpt", "1.25", "1"),
        ("false", "claude", "0.625", "2"),
        ("true", "", "1.875", "3"),
    ]
    top = json.loads(run(db_dsn, "cost", "top", "--by", "model", "--limit", "1", "--json").output)
    assert top == [
        {
            "rank": 1,
            "model": "gpt",
            "spend_usd": "1.25",
            "calls": 1,
            "input_tokens": 0,
            "output_tokens": 0,
        }
    ]
    bad = run(db_dsn, "cost", "report", "--since", "yesterday-ish")
    assert bad.exit_code == 2 and "is not a time" in bad.output


def test_reservations_prices_and_the_quarantine(db_dsn: str) -> None:
    _setup(db_dsn)
    held = json.loads(run(db_dsn, "budget", "reserve", "cli-a", "0.3", "--json").output)
    listed = json.loads(run(db_dsn, "reservation", "list", "--json").output)
    assert [(r["reservation_id"], r["agent"], r["estimate_usd"], r["overdue"]) for r in listed] == [
        (held["reservation_id"], "cli-a", "0.3", False)
    ]
    assert run(db_dsn, "price", "add", "openai", "gpt", "--input", "2.5", "--output", "10").exit_code == 0
    prices = json.loads(run(db_dsn, "price", "list", "--json").output)
    assert [(p["provider"], p["model"], p["input_usd_per_mtok"], p["current"]) for p in prices] == [
        ("openai", "gpt", "2.5", True)
    ]

    with psycopg.connect(db_dsn, autocommit=True) as c:
        agent = c.execute("SELECT sigledger.find_agent('cli-b')").fetchone()[0]  # type: ignore[index]
        c.execute(
            "SELECT sigledger.record_costs(%s)",
            (
                Jsonb(
                    [
                        {
                            "idempotency_key": "cq-1",
                            "agent_id": str(agent),
                            "model": "m",
                            "provider": "p",
                            "cost_usd": "0.5",
                            "created_at": "2020-06-01T00:00:00Z",
                        }
                    ]
                ),
            ),
        )
    quarantined = json.loads(run(db_dsn, "cost", "quarantine", "list", "--json").output)
    assert [(q["idempotency_key"], q["sqlstate"]) for q in quarantined] == [("cq-1", "22023")]
    qid = str(quarantined[0]["quarantine_id"])
    done = run(db_dsn, "cost", "quarantine", "resubmit", qid, "--set", "created_at=null", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["inserted"] is True
    assert json.loads(run(db_dsn, "cost", "quarantine", "list", "--json").output) == []
    bad = run(db_dsn, "cost", "quarantine", "resubmit", qid, "--set", "oops")
    assert bad.exit_code == 2 and "FIELD=VALUE" in bad.output


READS = {
    ("agent", "status"),
    ("agent", "list"),
    ("budget", "reserve"),
    ("budget", "settle"),
    ("budget", "reconcile"),
    ("budget", "alerts"),
    ("budget", "sinks"),
    ("budget", "tree"),
    ("budget", "list"),
    ("cost", "trends"),
    ("cost", "report"),
    ("cost", "top"),
    ("cost", "quarantine", "list"),
    ("cost", "quarantine", "resubmit"),
    ("reservation", "list"),
    ("reservation", "overruns"),
    ("price", "list"),
    ("migrate", "status"),
}
REPORTS = {
    ("agent", "list"),
    ("budget", "tree"),
    ("budget", "list"),
    ("cost", "report"),
    ("cost", "top"),
    ("cost", "trends"),
    ("reservation", "list"),
    ("price", "list"),
    ("budget", "alerts"),
}


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    out: dict[tuple[str, ...], click.Command] = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out.update(_commands(cmd, (*path, name)))
        else:
            out[(*path, name)] = cmd
    return out


def test_every_read_has_json_and_every_report_csv() -> None:
    commands = _commands(main)
    assert set(commands) >= READS, READS - set(commands)
    for path in READS:
        flags = {opt for p in commands[path].params for opt in p.opts}
        assert "--json" in flags, path
        if path in REPORTS:
            assert "--csv" in flags, path


def test_watch_and_money_documents_are_exact(db_dsn: str) -> None:
    """budget alerts (the stored documents) in a table: money with one precision, right-aligned."""
    _setup(db_dsn)
    record(db_dsn, "cli-b", "0.9", "al-1")  # crosses 80% of cli-b's $1
    out = run(db_dsn, "budget", "alerts").output.splitlines()
    assert out[1].rstrip().endswith("1.000000   0.900000")
    docs = json.loads(run(db_dsn, "budget", "alerts", "--json").output)
    assert docs[0]["spent_usd"] == "0.9" and docs[0]["threshold"] == "0.8"
    assert Decimal(docs[0]["limit_usd"]) == 1


def test_money_text_is_the_library_normalisation() -> None:
    """One rule for amounts as text (sigledger.core.money.text), used by every command's JSON and CSV: the
    normalised amount in fixed-point notation, whatever the column's scale."""
    from sigledger.cli.output import json_value, to_csv
    from sigledger.core import money

    cases = {"0E-10": "0", "0.0400000000": "0.04", "1E+1": "10", "1E-7": "0.0000001", "-2.50": "-2.5"}
    for raw, text in cases.items():
        assert money.text(Decimal(raw)) == text == json_value("spent_usd", Decimal(raw)), raw
    assert json_value("used_ratio", Decimal("0.900000")) == "0.9"
    assert json_value("calls", Decimal("3")) == 3
    assert to_csv([{"limit_usd": Decimal("5.000000")}]) == "limit_usd\n5"
