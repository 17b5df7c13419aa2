"""docs/operations.md answers each operator question with a command: every `$ sigledger ...` line of its
console blocks runs here, as a sigledger_admin login, against a database seeded like a small deployment, and
must succeed with some output. The runbook anchors the alert rules link to exist."""

from __future__ import annotations

import datetime as dt
import re
import shlex

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb
from sigledger.cli import main

from tests.reports.helpers import ROOT

OPS = ROOT / "docs" / "operations.md"


def doc_commands() -> list[str]:
    text = OPS.read_text()
    blocks = re.findall(r"```console\n(.*?)```", text, re.S)
    return [
        line[2:].strip() for block in blocks for line in block.splitlines() if line.startswith("$ sigledger ")
    ]


def seed(dsn: str) -> None:
    """acme (org, budget 1) > research, support (teams) > research-bot, support-bot, triage-bot; costs over the
    last days on several models and tags, an open reservation, an overrun, an alert, a quarantined row, a price."""
    with psycopg.connect(dsn, autocommit=True) as c:
        org = c.execute("SELECT sigledger.create_group_budget('org', 'acme', 1000, 'monthly')").fetchone()[0]  # type: ignore[index]
        assert org == 1
        teams = {}
        for team, limit in (("research", 200), ("support", 100)):
            teams[team] = c.execute(
                "SELECT sigledger.create_group_budget('team', %s, %s, 'monthly', p_parent_budget_id => %s)",
                (team, limit, org),
            ).fetchone()[0]  # type: ignore[index]
        for agent, limit, team in (
            ("research-bot", 50, "research"),
            ("support-bot", 10, "support"),
            ("triage-bot", 5, "support"),
        ):
            c.execute(
                "SELECT sigledger.create_agent(%s, %s, 'monthly', p_parent_budget_id => %s)",
                (agent, limit, teams[team]),
            )
        c.execute("SELECT sigledger.add_model_price('openai', 'gpt-4o', 2.5, 10, now() - interval '30 days')")
        now = dt.datetime.now(dt.UTC)
        for n, (agent, model, provider, cost, days, tag) in enumerate(
            [
                ("research-bot", "gpt-4o", "openai", "3.20", 0, "summarize"),
                ("research-bot", "claude-sonnet", "anthropic", "1.10", 1, "search"),
                ("support-bot", "gpt-4o", "openai", "8.40", 0, "reply"),
                ("triage-bot", "gemini-flash", "google", "0.05", 2, None),
            ]
        ):
            c.execute(
                "SELECT sigledger.record_cost(%s, sigledger.find_agent(%s), %s, %s, 1000, 200, %s::numeric, %s, %s)",
                (
                    f"ops-{n}",
                    agent,
                    model,
                    provider,
                    cost,
                    now - dt.timedelta(days=days),
                    Jsonb({"tag": tag} if tag else {}),
                ),
            )
        c.execute("SELECT sigledger.reserve_budget(sigledger.find_agent('research-bot'), 0.5)")
        over = c.execute(
            "SELECT reservation_id FROM sigledger.reserve_budget(sigledger.find_agent('triage-bot'), 0.1)"
        ).fetchone()[0]  # type: ignore[index]
        c.execute("SELECT sigledger.settle_budget(%s, 0.25)", (over,))
        agent = c.execute("SELECT sigledger.find_agent('triage-bot')").fetchone()[0]  # type: ignore[index]
        c.execute(
            "SELECT sigledger.record_costs(%s)",
            (
                Jsonb(
                    [
                        {
                            "idempotency_key": "ops-late",
                            "agent_id": str(agent),
                            "model": "gpt-4o",
                            "provider": "openai",
                            "cost_usd": "0.02",
                            "created_at": (now - dt.timedelta(days=20)).isoformat(),
                        }
                    ]
                ),
            ),
        )


def test_the_page_has_commands() -> None:
    assert len(doc_commands()) >= 20


def test_every_command_on_the_page_runs(db_dsn: str, admin_dsn: str) -> None:
    seed(db_dsn)
    failures = []
    for command in doc_commands():
        argv = shlex.split(command)[1:]
        result = CliRunner().invoke(
            main, [*argv, "--dsn", admin_dsn]
        )  # in-process: the same code, no startup
        if result.exit_code != 0 or not result.stdout.strip():
            failures.append(f"{command}: exit {result.exit_code}\n{result.output[-800:]}")
    assert not failures, "\n\n".join(failures)


def _anchors(markdown: str) -> set[str]:
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        slug = re.sub(r"[^a-z0-9 -]", "", heading.lower()).strip().replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("source", ["monitoring/prometheus/sigledger-rules.yml"])
def test_runbook_links_point_at_headings(source: str) -> None:
    anchors = _anchors(OPS.read_text())
    links = re.findall(r"docs/operations\.md#([a-z0-9-]+)", (ROOT / source).read_text())
    assert links
    missing = sorted(set(links) - anchors)
    assert not missing, missing
