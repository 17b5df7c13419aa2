"""`sigledger agent`: Agents and their budgets."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import click

from sigledger.budget import BudgetClient
from sigledger.cli._budget_common import (
    DECIMAL,
    budget_options,
    open_db,
)
from sigledger.cli.options import dsn_option
from sigledger.cli.output import emit, format_options
from sigledger.ledger.records import is_uuid
from sigledger.reports import ReportClient


@click.group("agent")
def group() -> None:
    """Agents and their budgets.

    Register an agent, create or change its budget, list agents, show an agent's current spend.
    """


@group.command("create")
@click.argument("name")
@click.option(
    "--limit", "limit_usd", type=DECIMAL, default=None, help="Budget limit in USD (no budget if omitted)."
)
@budget_options(parent_help="Team or org budget id above this agent (`budget tree`).")
@dsn_option
def create(name: str, limit_usd: Decimal | None, dsn: str | None, **settings: Any) -> None:
    """Register agent NAME (and its budget with --limit); prints its id."""
    with open_db(dsn) as db:
        agent_id = BudgetClient(db).create_agent(name, limit_usd, **settings)
    click.echo(agent_id)


@group.command("set-budget")
@click.argument("agent")
@click.option("--limit", "limit_usd", type=DECIMAL, default=None, help="Budget limit in USD.")
@budget_options(change=True, parent_help="Team or org budget id above this agent (`budget tree`).")
@dsn_option
def set_budget(agent: str, limit_usd: Decimal | None, dsn: str | None, **settings: Any) -> None:
    """Create or change the budget of AGENT (id or name); unspecified settings are kept."""
    with open_db(dsn) as db:
        budget_id = BudgetClient(db).set_budget(agent, limit_usd, **settings)
    click.echo(f"budget {budget_id}")


@group.command("status")
@click.argument("agent")
@format_options()
@dsn_option
def status(agent: str, fmt: str, dsn: str | None) -> None:
    """Current period of each budget level of AGENT (id or name), with its open reservations."""
    with open_db(dsn) as db:
        rows = BudgetClient(db).status(agent)
        name = agent
        if is_uuid(agent):  # given by id: its name from the agent list
            agent_id = uuid.UUID(agent)
            name = next((a["name"] for a in ReportClient(db).agents() if a["agent_id"] == agent_id), agent)
    # the agent level's budget is named agent:<id>: show the agent's name
    rows = [
        {"name": name if r["level"] == "agent" else r["name"], **{k: v for k, v in r.items() if k != "name"}}
        for r in rows
    ]
    if not rows and fmt == "table":
        click.echo(f"agent {name} has no budget")
        return
    emit(
        rows,
        fmt,
        [
            "level",
            "name",
            "budget_id",
            "period",
            "period_start",
            "limit_usd",
            "spent_usd",
            "reserved_usd",
            "remaining_usd",
            "excess_usd",
            "fail_policy",
            "open_reservations",
        ],
    )


@group.command("list")
@format_options(csv_too=True)
@dsn_option
def list_(fmt: str, dsn: str | None) -> None:
    """Every agent: its team and org, its own budget's current period and its open reservations."""
    with open_db(dsn) as db:
        rows = ReportClient(db).agents()
    emit(
        rows,
        fmt,
        [
            "name",
            "team",
            "org",
            "period",
            "limit_usd",
            "spent_usd",
            "reserved_usd",
            "used_ratio",
            "open_reservations",
        ],
    )
