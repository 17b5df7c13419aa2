"""`sigledger cost`: The LLM cost ledger."""

from __future__ import annotations

import uuid
from decimal import Decimal

import click

from sigledger.budget import BudgetClient
from sigledger.cli._budget_common import DECIMAL, emit, open_db, resolve_agent
from sigledger.cli.options import dsn_option
from sigledger.ledger.client import CostRecord, Ledger


@click.group("cost")
def group() -> None:
    """The LLM cost ledger.

    Record the cost of an LLM call; show daily totals.
    """


@group.command("record")
@click.option("--agent", required=True, help="Agent id or name.")
@click.option("--model", required=True)
@click.option("--provider", required=True)
@click.option("--input-tokens", type=int, default=0, show_default=True)
@click.option("--output-tokens", type=int, default=0, show_default=True)
@click.option(
    "--cost", "cost_usd", type=DECIMAL, default=None, help="USD; omitted: priced from the price table."
)
@click.option("--key", default=None, help="Idempotency key (default: a new one).")
@dsn_option
def record(
    agent: str,
    model: str,
    provider: str,
    input_tokens: int,
    output_tokens: int,
    cost_usd: Decimal | None,
    key: str | None,
    dsn: str | None,
) -> None:
    """Append one call's cost to the ledger; prints the ledger id (the same key again: the same id)."""
    with open_db(dsn) as db:
        agent_id = resolve_agent(BudgetClient(db), agent)
        ledger_id = Ledger(db).record_cost(
            CostRecord(
                agent_id=agent_id,
                model=model,
                provider=provider,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost_usd,
                idempotency_key=key or f"cli:{uuid.uuid4()}",
            )
        )
    click.echo(ledger_id)


@group.command("trends")
@click.option("--days", type=int, required=True, help="1..365 days, today included.")
@click.option("--json", "as_json", is_flag=True)
@dsn_option
def trends(days: int, as_json: bool, dsn: str | None) -> None:
    """Per-day (UTC) totals of the last DAYS days."""
    with open_db(dsn) as db:
        rows = Ledger(db).cost_trends(days)
    emit(rows, as_json)
