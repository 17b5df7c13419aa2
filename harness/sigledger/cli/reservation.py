"""`sigledger reservation`: Open budget reservations."""

from __future__ import annotations

import datetime as dt

import click

from sigledger.cli._budget_common import INSTANT, open_db
from sigledger.cli.options import dsn_option
from sigledger.cli.output import emit, format_options
from sigledger.reports import ReportClient


@click.group("reservation")
def group() -> None:
    """Budget reservations (holds before an LLM call).

    List the open ones (overdue: past expiry, waiting for `budget expire`); list settlements above their
    estimate.
    """


@group.command("list")
@click.option("--agent", default=None, help="Only this agent (id or name).")
@click.option("--limit", type=click.IntRange(1, 100000), default=1000, show_default=True)
@format_options(csv_too=True)
@dsn_option
def list_(agent: str | None, limit: int, fmt: str, dsn: str | None) -> None:
    """Open reservations, soonest expiry first."""
    with open_db(dsn) as db:
        rows = ReportClient(db).open_reservations(agent, limit)
    emit(
        rows,
        fmt,
        ["reservation_id", "agent", "estimate_usd", "created_at", "expires_at", "overdue", "idempotency_key"],
    )


@group.command("overruns")
@click.option("--since", type=INSTANT, default="-7d", show_default=True)
@click.option("--until", type=INSTANT, default="now", show_default=True)
@click.option("--agent", default=None, help="Only this agent (id or name).")
@click.option("--limit", type=click.IntRange(1, 100000), default=1000, show_default=True)
@format_options(csv_too=True)
@dsn_option
def overruns(
    since: dt.datetime, until: dt.datetime, agent: str | None, limit: int, fmt: str, dsn: str | None
) -> None:
    """Reservations settled above their estimate in [--since, --until), largest overrun first."""
    with open_db(dsn) as db:
        rows = ReportClient(db).overruns(since, until, agent, limit)
    emit(rows, fmt, ["reservation_id", "agent", "estimate_usd", "actual_usd", "overrun_usd", "closed_at"])
