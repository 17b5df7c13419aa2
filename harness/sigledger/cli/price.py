"""`sigledger price`: The dated model price table."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import click

from sigledger.budget import BudgetClient
from sigledger.cli._budget_common import DECIMAL, INSTANT, open_db
from sigledger.cli.options import dsn_option
from sigledger.cli.output import emit, format_options
from sigledger.reports import ReportClient


@click.group("price")
def group() -> None:
    """The dated price table (USD per million tokens).

    A cost recorded without --cost is priced from it; a client cost is compared with it.
    """


@group.command("add")
@click.argument("provider")
@click.argument("model")
@click.option("--input", "input_usd", type=DECIMAL, required=True, help="USD per million input tokens.")
@click.option("--output", "output_usd", type=DECIMAL, required=True, help="USD per million output tokens.")
@click.option("--from", "valid_from", type=INSTANT, default=None, help="Valid from (default now).")
@dsn_option
def add(
    provider: str,
    model: str,
    input_usd: Decimal,
    output_usd: Decimal,
    valid_from: dt.datetime | None,
    dsn: str | None,
) -> None:
    """Add a price for PROVIDER MODEL (sigledger_admin); prices are never edited, a later one supersedes."""
    with open_db(dsn) as db:
        start = BudgetClient(db).add_model_price(
            provider, model, input_usd, output_usd, valid_from=valid_from
        )
    click.echo(f"{provider}/{model} priced from {start.isoformat()}")


@group.command("list")
@click.option("--provider", default=None)
@click.option("--model", default=None)
@click.option("--history", is_flag=True, help="Every price ever, not only the current and scheduled ones.")
@format_options(csv_too=True)
@dsn_option
def list_(provider: str | None, model: str | None, history: bool, fmt: str, dsn: str | None) -> None:
    """Current (and scheduled) prices by provider and model."""
    with open_db(dsn) as db:
        rows = ReportClient(db).prices(provider, model, history)
    emit(
        rows,
        fmt,
        [
            "provider",
            "model",
            "input_usd_per_mtok",
            "output_usd_per_mtok",
            "valid_from",
            "valid_until",
            "current",
        ],
    )
