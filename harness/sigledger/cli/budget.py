"""`sigledger budget`: Budget reservations and reconciliation."""

from __future__ import annotations

import json
import sys
import time
import uuid
from decimal import Decimal

import click
from psycopg.rows import dict_row

from sigledger.budget import BudgetClient
from sigledger.cli._budget_common import DECIMAL, emit, open_db, resolve_agent
from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.core.db import connect
from sigledger.core.errors import Retryable

DRIFT_EXIT = 3


@click.group("budget")
def group() -> None:
    """Budget reservations and reconciliation.

    Reserve, settle or release a hold on an agent's budget; expire overdue holds; reconcile spend with the
    ledger; watch budget alerts.
    """


@group.command("reserve")
@click.argument("agent")
@click.argument("estimate", type=DECIMAL)
@click.option(
    "--ttl", type=click.FloatRange(min=1, max=7 * 86400), default=600, show_default=True, help="Seconds."
)
@click.option("--key", default=None, help="Idempotency key (default: a new one).")
@click.option("--json", "as_json", is_flag=True)
@dsn_option
def reserve(
    agent: str, estimate: Decimal, ttl: float, key: str | None, as_json: bool, dsn: str | None
) -> None:
    """Hold ESTIMATE USD on AGENT's budget (id or name). Refused with SLB01 (exit 1) when it does not fit."""
    with open_db(dsn) as db:
        client = BudgetClient(db)
        row = client.reserve(resolve_agent(client, agent), estimate, ttl, key or f"cli:{uuid.uuid4()}")
    emit(row, as_json)


@group.command("settle")
@click.argument("reservation_id", type=int)
@click.option(
    "--cost", "cost_usd", type=DECIMAL, default=None, help="Actual USD; omitted: priced from tokens."
)
@click.option("--input-tokens", type=int, default=0, show_default=True)
@click.option("--output-tokens", type=int, default=0, show_default=True)
@click.option("--model", default="unspecified", show_default=True)
@click.option("--provider", default="unspecified", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@dsn_option
def settle(
    reservation_id: int,
    cost_usd: Decimal | None,
    input_tokens: int,
    output_tokens: int,
    model: str,
    provider: str,
    as_json: bool,
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
    emit(row, as_json)


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
@click.option("--json", "as_json", is_flag=True)
@dsn_option
def reconcile(repair: bool, as_json: bool, dsn: str | None) -> None:
    """Recompute spend from the ledger and holds from open reservations; report drift.

    Exit status 3 when drift was found and not repaired (for cron and CI checks)."""
    with open_db(dsn) as db:
        rows = BudgetClient(db).reconcile(repair)
    emit(rows, as_json)
    if rows and not repair:
        sys.exit(DRIFT_EXIT)


@group.command("watch")
@click.option("--after", type=int, default=0, help="First print the stored alerts with a larger id.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many alerts.")
@dsn_option
def watch(after: int, count: int | None, dsn: str | None) -> None:
    """Print budget alerts as they happen (LISTEN sigledger_budget_alert), one JSON object a line."""
    seen = 0
    conn = connect(resolve_dsn(dsn), application_name="sigledger-watch", autocommit=True)
    try:
        conn.execute("LISTEN sigledger_budget_alert")
        # alerts stored before LISTEN took effect come from the table; notifications then bring the newer ones
        last = after
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT * FROM sigledger.budget_alerts_after(p_after_id => %s::bigint)", (after,))
            for alert in cur.fetchall():
                last = max(last, int(alert["id"]))
                click.echo(json.dumps({"alert_id": alert.pop("id"), **alert}, default=str))
                seen += 1
                if count is not None and seen >= count:
                    return
        while True:
            for note in conn.notifies(timeout=1.0, stop_after=1):
                alert = json.loads(note.payload)
                if int(alert["alert_id"]) <= last:
                    continue
                last = int(alert["alert_id"])
                click.echo(json.dumps(alert))
                seen += 1
                if count is not None and seen >= count:
                    return
    finally:
        conn.close()


@group.command("sweep")
@click.option("--every", type=click.FloatRange(min=0.1), required=True, help="Seconds between sweeps.")
@click.option("--repair", is_flag=True, help="Also repair drift found by reconciliation.")
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Stop after this many sweeps.")
@dsn_option
def sweep(every: float, repair: bool, iterations: int | None, dsn: str | None) -> None:
    """Expire overdue reservations, reconcile and create the ledger's partitions ahead every N seconds
    (where there is no pg_cron)."""
    done = 0
    with open_db(dsn) as db:
        client = BudgetClient(db)
        while True:
            expired = client.expire()
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
