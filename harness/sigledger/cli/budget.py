"""`sigledger budget`: Budget reservations and reconciliation."""

from __future__ import annotations

import json
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

import click

from sigledger.budget import BudgetClient
from sigledger.cli import exit_codes
from sigledger.cli._budget_common import DECIMAL, budget_options, open_db
from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.cli.output import emit, format_options
from sigledger.core.errors import Retryable
from sigledger.reports import ReportClient
from sigledger.reports.alerts import Watcher, Webhook, sink_name

DRIFT_EXIT = exit_codes.ATTENTION
# the shortest period between runs of fire_missed_alerts() by `budget watch --webhook` (0 turns them off)
MIN_FIRE_MISSED_EVERY = 0.5


@click.group("budget")
def group() -> None:
    """Budgets: the tree, the ones near their limit, holds, reconciliation, alerts.

    Create team and org budgets; list budgets (all of them as a tree, or those near their limit); reserve,
    settle or release a hold on an agent's budget; expire overdue holds; reconcile spend with the ledger;
    watch budget alerts (and deliver them to a webhook).
    """


@group.command("reserve")
@click.argument("agent")
@click.argument("estimate", type=DECIMAL)
@click.option(
    "--ttl", type=click.FloatRange(min=1, max=7 * 86400), default=600, show_default=True, help="Seconds."
)
@click.option("--key", default=None, help="Idempotency key (default: a new one).")
@format_options()
@dsn_option
def reserve(agent: str, estimate: Decimal, ttl: float, key: str | None, fmt: str, dsn: str | None) -> None:
    """Hold ESTIMATE USD on AGENT's budget (id or name). Refused with SLB01 (exit 1) when it does not fit."""
    with open_db(dsn) as db:
        row = BudgetClient(db).reserve(agent, estimate, ttl, key or f"cli:{uuid.uuid4()}")
    emit(row, fmt)


@group.command("settle")
@click.argument("reservation_id", type=int)
@click.option(
    "--cost", "cost_usd", type=DECIMAL, default=None, help="Actual USD; omitted: priced from tokens."
)
@click.option("--input-tokens", type=int, default=0, show_default=True)
@click.option("--output-tokens", type=int, default=0, show_default=True)
@click.option("--model", default="unspecified", show_default=True)
@click.option("--provider", default="unspecified", show_default=True)
@format_options()
@dsn_option
def settle(
    reservation_id: int,
    cost_usd: Decimal | None,
    input_tokens: int,
    output_tokens: int,
    model: str,
    provider: str,
    fmt: str,
    dsn: str | None,
) -> None:
    """Settle RESERVATION_ID with the actual cost (ledger row + hold released; idempotent)."""
    with open_db(dsn) as db:
        row = BudgetClient(db).settle(
            reservation_id,
            cost_usd,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=model,
            provider=provider,
        )
    emit(row, fmt)


@group.command("release")
@click.argument("reservation_id", type=int)
@dsn_option
def release(reservation_id: int, dsn: str | None) -> None:
    """Release the hold of RESERVATION_ID (idempotent); prints its final state."""
    with open_db(dsn) as db:
        click.echo(BudgetClient(db).release(reservation_id))


@group.command("expire")
@click.option("--limit", type=click.IntRange(1, 1000000), default=10000, show_default=True)
@dsn_option
def expire(limit: int, dsn: str | None) -> None:
    """Release the holds of reservations past their TTL; prints how many."""
    with open_db(dsn) as db:
        click.echo(BudgetClient(db).expire(limit))


@group.command("reconcile")
@click.option("--repair", is_flag=True, help="Set recorded spend and holds to the recomputed values.")
@format_options()
@dsn_option
def reconcile(repair: bool, fmt: str, dsn: str | None) -> None:
    """Recompute spend from the ledger and holds from open reservations; report drift.

    Exit status 3 when drift was found and not repaired (for cron and CI checks)."""
    with open_db(dsn) as db:
        rows = BudgetClient(db).reconcile(repair)
    emit(rows, fmt)
    if rows and not repair:
        sys.exit(DRIFT_EXIT)


@group.command("watch")
@click.option("--replay", is_flag=True, help="First the stored alerts (all, or those after --after).")
@click.option("--after", type=click.IntRange(min=0), default=None, help="With --replay: after this alert id.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many alerts.")
@click.option("--webhook", default=None, help="POST each alert (JSON) to this URL, at least once.")
@click.option(
    "--sink", default=None, help="Name the webhook's delivery memory (default: the URL sans query)."
)
@click.option(
    "--retries", type=click.IntRange(0, 100), default=5, show_default=True, help="Per alert and round."
)
@click.option(
    "--backoff",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="First retry delay (s).",
)
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=10, show_default=True, help="HTTP timeout (s)."
)
@click.option(
    "--fire-missed-every",
    type=click.FloatRange(min=0),
    default=None,
    help="With --webhook: seconds between runs of fire_missed_alerts() (default 60; 0: never; else at least 0.5).",
)
@dsn_option
def watch(
    replay: bool,
    after: int | None,
    count: int | None,
    webhook: str | None,
    sink: str | None,
    retries: int,
    backoff: float,
    timeout: float,
    fire_missed_every: float | None,
    dsn: str | None,
) -> None:
    """Print budget alerts as they happen, one JSON document a line, starting from now.

    The notification only wakes the watcher: each alert is read through the API by id (what cannot be parsed
    or found is ignored with a warning). With --webhook, each alert is POSTed until the receiver answers 2xx
    (retries with exponential backoff), and what was delivered is remembered in the database under the
    sink's name: a restarted watcher delivers what is pending, at least once. --replay: also the stored
    alerts (the webhook: every stored alert not yet delivered to it).

    With --webhook the watcher also fires the alerts sliced budgets missed (two concurrent charges on two
    slices that reach a threshold together), as `budget sweep` does: when it starts, then every
    --fire-missed-every seconds, so they are delivered without a sweep or pg_cron."""
    if after is not None and not replay:
        raise click.UsageError("--after needs --replay")
    if fire_missed_every is not None and webhook is None:
        raise click.UsageError("--fire-missed-every needs --webhook")
    if fire_missed_every is not None and 0 < fire_missed_every < MIN_FIRE_MISSED_EVERY:
        # each run scans every budget's current periods: a near-zero period would run it back to back
        raise click.UsageError(
            f"--fire-missed-every must be 0 (never) or at least {MIN_FIRE_MISSED_EVERY} s, got {fire_missed_every}"
        )
    resolved = resolve_dsn(dsn)

    def warn(message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    def out(document: dict[str, object]) -> None:
        click.echo(json.dumps(document))

    watcher = Watcher(resolved, warn)
    try:
        click.echo(f"watching budget alerts ({'replay, then ' if replay else ''}from now)", err=True)
        if webhook is None:
            watcher.print_alerts(out, replay_after=(after or 0) if replay else None, count=count)
        else:
            hook = Webhook(webhook, retries=retries, backoff=backoff, timeout=timeout)
            watcher.deliver_alerts(
                hook,
                sink or sink_name(webhook),
                out,
                replay=replay,
                count=count,
                announce=lambda message: click.echo(message, err=True),
                fire_missed_every=(60.0 if fire_missed_every is None else (fire_missed_every or None)),
            )
    finally:
        watcher.close()


@group.command("alerts")
@click.option(
    "--after", type=click.IntRange(min=0), default=0, show_default=True, help="Alerts after this id."
)
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@format_options(csv_too=True)
@dsn_option
def alerts(after: int, limit: int, fmt: str, dsn: str | None) -> None:
    """Stored budget alerts, oldest first (the documents `watch` prints)."""
    with open_db(dsn) as db:
        rows = [r["document"] for r in ReportClient(db).alert_feed(after, limit)]
    emit(
        rows,
        fmt,
        [
            "alert_id",
            "created_at",
            "level",
            "name",
            "period",
            "period_start",
            "threshold",
            "limit_usd",
            "spent_usd",
        ],
    )


@group.command("sinks")
@format_options()
@dsn_option
def sinks(fmt: str, dsn: str | None) -> None:
    """Alert sinks (webhooks of `watch --webhook`): delivered, pending, last delivery."""
    with open_db(dsn) as db:
        emit(ReportClient(db).alert_sinks(), fmt)


@group.command("sweep")
@click.option("--every", type=click.FloatRange(min=0.1), required=True, help="Seconds between sweeps.")
@click.option("--repair", is_flag=True, help="Also repair drift found by reconciliation.")
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Stop after this many sweeps.")
@dsn_option
def sweep(every: float, repair: bool, iterations: int | None, dsn: str | None) -> None:
    """Expire overdue reservations, fire the alerts sliced budgets missed, reconcile and create the ledger's
    partitions ahead every N seconds (where there is no pg_cron)."""
    done = 0
    with open_db(dsn) as db:
        client = BudgetClient(db)
        while True:
            expired = client.expire()
            alerts = client.fire_missed_alerts()
            drift = client.reconcile(repair)
            try:
                partitions: int | None = client.ensure_partitions()
            except Retryable as exc:
                # the ledger was busy (55P03 after 5s): the partitions are made months ahead, the next sweep retries
                click.echo(f"ledger partitions not checked: {exc}", err=True)
                partitions = None
            click.echo(
                json.dumps(
                    {
                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "expired": expired,
                        "alerts_fired": alerts,
                        "drift_rows": len(drift),
                        "repaired": repair and bool(drift),
                        "partitions_created": partitions,
                    }
                )
            )
            done += 1
            if iterations is not None and done >= iterations:
                return
            time.sleep(every)


@group.command("create-group")
@click.argument("level", type=click.Choice(["team", "org"]))
@click.argument("name")
@click.option("--limit", "limit_usd", type=DECIMAL, required=True, help="Limit in USD per period.")
@budget_options(parent_help="The org budget above a team.")
@dsn_option
def create_group(level: str, name: str, limit_usd: Decimal, dsn: str | None, **settings: Any) -> None:
    """Create a team or org budget NAME; prints its id. Agents join with `agent create --parent-budget ID`."""
    with open_db(dsn) as db:
        budget_id = BudgetClient(db).create_group_budget(level, name, limit_usd, **settings)
    click.echo(budget_id)


@group.command("tree")
@format_options(csv_too=True)
@dsn_option
def tree(fmt: str, dsn: str | None) -> None:
    """Every budget, org -> team -> agent, with its current period: limit, spent, reserved, use of the limit."""
    with open_db(dsn) as db:
        rows = ReportClient(db).budget_tree()
    if fmt == "table":
        rows = [{**r, "name": "  " * int(r["depth"]) + str(r["name"])} for r in rows]
    emit(
        rows,
        fmt,
        ["name", "level", "budget_id", "period", "limit_usd", "spent_usd", "reserved_usd", "used_ratio"],
    )


@group.command("list")
@click.option(
    "--near",
    "threshold",
    type=DECIMAL,
    default=Decimal("0.8"),
    show_default=True,
    help="Fraction of the limit (spent + reserved) from which a budget is listed.",
)
@click.option("--level", type=click.Choice(["org", "team", "agent"]), default=None)
@format_options(csv_too=True)
@dsn_option
def list_(threshold: Decimal, level: str | None, fmt: str, dsn: str | None) -> None:
    """Budgets at every level near or over their limit this period, fullest first."""
    with open_db(dsn) as db:
        rows = ReportClient(db).near_limit(threshold, level)
    emit(
        rows,
        fmt,
        [
            "level",
            "name",
            "budget_id",
            "period",
            "limit_usd",
            "spent_usd",
            "reserved_usd",
            "used_ratio",
            "state",
        ],
    )
