"""`sigledger cost`: The LLM cost ledger: record, report, top, trends, quarantine."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

import click

from sigledger.cli._budget_common import DECIMAL, INSTANT, open_db
from sigledger.cli.options import dsn_option
from sigledger.cli.output import emit, format_options
from sigledger.core.errors import NotFound
from sigledger.ledger.client import CostRecord, Ledger
from sigledger.reports import DIMENSIONS, ReportClient

#: a report over more than this many days, run on a terminal, is read month by month with progress
CHUNK_OVER_DAYS = 62
DIMS = click.Choice(DIMENSIONS)


@click.group("cost")
def group() -> None:
    """The LLM cost ledger.

    Record the cost of an LLM call; report spend by agent, team, org, model, provider, day/week/month or tag
    over a time range; the top spenders; daily totals; the quarantine of refused batch rows.
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
@click.option("--tag", default=None, help='Stored as metadata {"tag": TAG} (cost report --by tag).')
@dsn_option
def record(
    agent: str,
    model: str,
    provider: str,
    input_tokens: int,
    output_tokens: int,
    cost_usd: Decimal | None,
    key: str | None,
    tag: str | None,
    dsn: str | None,
) -> None:
    """Append one call's cost to the ledger; prints the ledger id (the same key again: the same id)."""
    with open_db(dsn) as db:
        ledger_id = Ledger(db).record_cost(
            CostRecord(
                agent_id=agent,
                model=model,
                provider=provider,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost_usd,
                idempotency_key=key or f"cli:{uuid.uuid4()}",
                metadata={"tag": tag} if tag is not None else {},
            )
        )
    click.echo(ledger_id)


@group.command("trends")
@click.option("--days", type=int, required=True, help="1..365 days, today included.")
@format_options(csv_too=True)
@dsn_option
def trends(days: int, fmt: str, dsn: str | None) -> None:
    """Per-day (UTC) totals of the last DAYS days."""
    with open_db(dsn) as db:
        rows = Ledger(db).cost_trends(days)
    emit(rows, fmt)


def _columns(by: tuple[str, ...]) -> list[str]:
    cols = []
    if set(by) & {"day", "week", "month"}:
        cols.append("bucket")
    cols += [d for d in ("agent", "team", "org", "model", "provider", "tag") if d in by]
    return [*cols, "spend_usd", "calls", "input_tokens", "output_tokens"]


def _month_chunks(since: dt.datetime, until: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """[since, until) cut at UTC month starts."""
    chunks = []
    start = since
    while start < until:
        first = start.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (first + dt.timedelta(days=32)).replace(day=1)
        end = min(nxt, until)
        chunks.append((start, end))
        start = end
    return chunks


@group.command("report")
@click.option("--by", "by", type=DIMS, multiple=True, help="Group by (repeat, up to 4); default agent.")
@click.option("--since", type=INSTANT, default="-30d", show_default=True, help="From (ISO 8601, today, -7d).")
@click.option("--until", type=INSTANT, default="now", show_default=True, help="To (excluded).")
@click.option("--agent", default=None, help="Only this agent (id or name).")
@click.option("--budget", "budget_id", type=int, default=None, help="Only the agents under this budget id.")
@click.option("--team", default=None, help="Only the agents under this team budget (by name).")
@click.option("--org", default=None, help="Only the agents under this org budget (by name).")
@click.option("--tag-key", default="tag", show_default=True, help="Metadata key of --by tag.")
@click.option("--no-total", is_flag=True, help="Leave out the total row.")
@format_options(csv_too=True)
@dsn_option
def report(
    by: tuple[str, ...],
    since: dt.datetime,
    until: dt.datetime,
    agent: str | None,
    budget_id: int | None,
    team: str | None,
    org: str | None,
    tag_key: str,
    no_total: bool,
    fmt: str,
    dsn: str | None,
) -> None:
    """Spend, calls and tokens over [--since, --until) (UTC), grouped, with a total row.

    Teams and orgs are those of the budget hierarchy now. On a terminal, a range over two months is read
    month by month with progress on stderr."""
    by = by or ("agent",)
    with open_db(dsn, "sigledger-report") as db:
        client = ReportClient(db)
        if team or org:
            if budget_id is not None or (team and org):
                raise click.UsageError("give one of --budget, --team, --org")
            budget_id = _group_budget(client, "team" if team else "org", team or org or "")
        kwargs: dict[str, Any] = {"agent": agent, "budget_id": budget_id, "tag_key": tag_key}
        if sys.stderr.isatty() and (until - since).days > CHUNK_OVER_DAYS:
            rows = client.spend_report_chunked(_month_chunks(since, until), by, _progress(), **kwargs)
        else:
            rows = client.spend_report(since, until, by, **kwargs)
    if no_total:
        rows = [r for r in rows if not r["is_total"]]
    columns = _columns(by)
    if fmt == "table":
        rows = [{**r, columns[0]: "TOTAL"} if r["is_total"] else r for r in rows]
    else:
        columns = ["is_total", *(["agent_id"] if "agent" in by else []), *columns]
        rows = [{k: r[k] for k in columns} for r in rows]  # the report's own columns, not every dimension
    emit(rows, fmt, columns)


def _group_budget(client: ReportClient, level: str, name: str) -> int:
    for row in client.budget_tree():
        if row["level"] == level and row["name"] == name:
            return int(row["budget_id"])
    raise NotFound(f"unknown {level} budget {name!r}", sqlstate="P0002")


def _progress() -> Any:
    started = time.monotonic()

    def show(n: int, of: int, calls: int) -> None:
        rate = calls / max(time.monotonic() - started, 1e-6)
        click.echo(f"\rmonth {n}/{of}: {calls:,} ledger rows read ({rate:,.0f} rows/s)", err=True, nl=n == of)

    return show


@group.command("top")
@click.option("--by", "by", type=DIMS, multiple=True, help="Group by (default agent).")
@click.option("--since", type=INSTANT, default="-7d", show_default=True)
@click.option("--until", type=INSTANT, default="now", show_default=True)
@click.option("--limit", type=click.IntRange(1, 10000), default=10, show_default=True)
@click.option("--tag-key", default="tag", show_default=True)
@format_options(csv_too=True)
@dsn_option
def top(
    by: tuple[str, ...],
    since: dt.datetime,
    until: dt.datetime,
    limit: int,
    tag_key: str,
    fmt: str,
    dsn: str | None,
) -> None:
    """The largest spenders (agents, models, ...) over [--since, --until)."""
    by = by or ("agent",)
    with open_db(dsn, "sigledger-report") as db:
        rows = ReportClient(db).spend_top(since, until, by, limit, tag_key=tag_key)
    columns = ["rank", *_columns(by)]
    if fmt != "table":
        columns = ["rank", *(["agent_id"] if "agent" in by else []), *columns[1:]]
        rows = [{k: r[k] for k in columns} for r in rows]
    emit(rows, fmt, columns)


@group.group("quarantine")
def quarantine() -> None:
    """Batch rows the ledger refused (sigledger_admin): list them, re-submit a fixed one."""


@quarantine.command("list")
@click.option("--all", "include_resolved", is_flag=True, help="Also the rows already re-submitted.")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@format_options(csv_too=True)
@dsn_option
def quarantine_list(include_resolved: bool, limit: int, fmt: str, dsn: str | None) -> None:
    """Quarantined rows, oldest first: SQLSTATE, reason, the payload as received."""
    with open_db(dsn) as db:
        rows = ReportClient(db).quarantine(include_resolved, limit)
    emit(
        rows,
        fmt,
        ["quarantine_id", "received_at", "idempotency_key", "sqlstate", "reason", "resolved_ledger_id"],
    )


@quarantine.command("resubmit")
@click.argument("quarantine_id", type=int)
@click.option(
    "--set",
    "changes",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Fix a field (repeat); VALUE is JSON when it parses (null: now for created_at), else text.",
)
@format_options()
@dsn_option
def quarantine_resubmit(quarantine_id: int, changes: tuple[str, ...], fmt: str, dsn: str | None) -> None:
    """Record quarantined row QUARANTINE_ID (fixed with --set) like any new cost, and mark it resolved."""
    fixed: dict[str, Any] = {}
    for change in changes:
        field, sep, value = change.partition("=")
        if not sep or not field:
            raise click.BadParameter(f"{change!r} is not FIELD=VALUE", param_hint="--set")
        try:
            fixed[field] = json.loads(value)
        except ValueError:
            fixed[field] = value
    with open_db(dsn) as db:
        row = ReportClient(db).resubmit(quarantine_id, fixed)
    emit(row, fmt)
