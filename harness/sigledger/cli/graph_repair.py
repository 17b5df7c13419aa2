"""`sigledger graph dead|verify|rebuild`: finding and repairing what the projection could not do by itself
(registered on the `graph` group by sigledger.cli.graph)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any

import click
import psycopg
from psycopg.rows import dict_row

from sigledger.cli import exit_codes
from sigledger.cli.graph_common import APP, Progress, neo4j_options, open_sink, outbox_status, settings_of
from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.core.db import connect as db_connect
from sigledger.graph import rebuild as rebuild_mod
from sigledger.graph.verify import Drift
from sigledger.graph.verify import verify as verify_graph
from sigledger.graph.worker import WorkerConfig, make_worker

DRIFT_EXIT_CODE = exit_codes.ATTENTION


@click.group("dead")
def dead() -> None:
    """Rows that failed max-attempts times: list, retry (after a fix), purge."""


@dead.command("list")
@dsn_option
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def dead_list(dsn: str | None, limit: int, as_json: bool) -> None:
    """Dead rows, oldest first, with their last error."""
    with db_connect(resolve_dsn(dsn), row_factory=dict_row, application_name=APP) as conn:
        rows = conn.execute(
            "SELECT * FROM sigledger._graph_dead_list(p_limit => %s::integer)", (limit,)
        ).fetchall()
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    if not rows:
        click.echo("no dead rows")
    for r in rows:
        click.echo(
            f"{r['id']}\t{r['aggregate_type']} {r['aggregate_id']}\t{r['event_type']}\t"
            f"attempts={r['attempts']}\tdead_at={r['dead_at']:%Y-%m-%d %H:%M:%S%z}\n    {r['last_error']}"
        )


def _ids_or_all(ids: tuple[int, ...], all_rows: bool) -> list[int] | None:
    if bool(ids) == all_rows:
        raise click.UsageError("give outbox ids, or --all (not both)")
    return None if all_rows else list(ids)


@dead.command("retry")
@dsn_option
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_rows", is_flag=True, help="Every dead row.")
def dead_retry(dsn: str | None, ids: tuple[int, ...], all_rows: bool) -> None:
    """Make dead rows due again (attempts reset). Fix the cause first."""
    with db_connect(resolve_dsn(dsn), application_name=APP) as conn:
        row = conn.execute(
            "SELECT sigledger._graph_dead_retry(p_ids => %s::bigint[])", (_ids_or_all(ids, all_rows),)
        ).fetchone()
    click.echo(f"{row[0] if row else 0} dead rows are due again")


@dead.command("purge")
@dsn_option
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_rows", is_flag=True, help="Every dead row.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_purge(dsn: str | None, ids: tuple[int, ...], all_rows: bool, yes: bool) -> None:
    """Delete dead rows. Their aggregates stay as Neo4j last saw them (`graph verify` shows it)."""
    selection = _ids_or_all(ids, all_rows)
    if not yes:
        click.confirm(f"delete {'every' if selection is None else len(selection)} dead row(s)?", abort=True)
    with db_connect(resolve_dsn(dsn), application_name=APP) as conn:
        row = conn.execute(
            "SELECT sigledger._graph_dead_purge(p_ids => %s::bigint[])", (selection,)
        ).fetchone()
    click.echo(f"{row[0] if row else 0} dead rows deleted")


def _print_drift(drift: Drift, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(drift.as_dict()))
        return
    checked = ", ".join(f"{n} {k}" for k, n in drift.checked.items())
    t = drift.totals()
    flight = f"; {t['in_flight']} in flight (being projected, not compared)" if t["in_flight"] else ""
    if drift.clean:
        click.echo(f"clean: Neo4j matches Postgres ({checked}{flight})")
        return
    click.echo(
        f"DRIFT: {t['missing']} missing, {t['extra']} extra, {t['stale']} stale ({checked} checked{flight})"
    )
    for what in ("missing", "extra", "stale"):
        for kind, ids in getattr(drift, what).items():
            for i in ids[:20]:
                why = drift.details.get(f"{kind} {i}")
                click.echo(f"  {what}\t{kind} {i}" + (f"\t{why}" if why else ""))
            if len(ids) > 20:
                click.echo(f"  {what}\t{kind}: {len(ids) - 20} more")


@click.command("verify")
@dsn_option
@neo4j_options
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--consistent",
    is_flag=True,
    help="Compare while workers run: each aggregate under the lock a worker takes to project it; work in "
    "flight is reported apart, never as drift.",
)
def verify(dsn: str | None, as_json: bool, consistent: bool, **kw: Any) -> None:
    """Diff Postgres against Neo4j: missing, extra, stale. Exit 3 on drift."""
    dsn = resolve_dsn(dsn)
    pending = int(outbox_status(dsn)["pending"])
    progress = Progress("comparing", None, unit="aggregates")
    try:
        with open_sink(settings_of(kw)) as sink:
            drift = verify_graph(dsn, sink, consistent=consistent, progress=lambda _k, n: progress.advance(n))
    finally:
        progress.close()
    _print_drift(drift, as_json)
    if not as_json and pending and not consistent:
        click.echo(
            f"note: {pending} outbox rows are still pending; drift may be work in flight "
            "(--consistent tells them apart)",
            err=True,
        )
    if not drift.clean:
        sys.exit(DRIFT_EXIT_CODE)


@click.command("rebuild")
@dsn_option
@neo4j_options
@click.option("--dry-run", is_flag=True, help="Only show what would be refreshed and deleted.")
@click.option("--no-drain", is_flag=True, help="Only enqueue; leave the projection to the running workers.")
@click.option(
    "--batch-size", type=click.IntRange(1, 10000), default=WorkerConfig.batch_size, show_default=True
)
def rebuild(dsn: str | None, dry_run: bool, no_drain: bool, batch_size: int, **kw: Any) -> None:
    """Make the graph this database's projection again, from any state: a new epoch, every aggregate
    re-projected, every node Postgres does not have deleted (whatever database or version wrote it)."""
    dsn = resolve_dsn(dsn)
    settings = settings_of(kw)
    with open_sink(settings) as sink:
        comparing = Progress("comparing", None, unit="aggregates")
        try:
            the_plan = rebuild_mod.plan(dsn, sink, progress=lambda _k, n: comparing.advance(n))
        finally:
            comparing.close()
        summary = the_plan.as_dict()
        click.echo(
            f"refresh: {summary['refresh']}  delete: {summary['delete']}  "
            f"drift before: {summary['drift_before']}  graph: {summary['graph']}"
        )
        if dry_run:
            click.echo("dry run: nothing enqueued")
            return
        enqueued = rebuild_mod.enqueue(dsn, sink, the_plan)
        click.echo(f"new epoch; enqueued {enqueued} refresh rows")
    if no_drain:
        return
    worker = make_worker(dsn, settings, replace(WorkerConfig(), batch_size=batch_size))
    progress = Progress("projecting", int(outbox_status(dsn)["due"]))
    try:
        total = worker.run(once=True, on_batch=lambda res: progress.advance(res.acked + res.failed))
    except psycopg.errors.InsufficientPrivilege:
        # An administrator may start the epoch and enqueue; claiming outbox rows is the sync workers' (a
        # login in sigledger_graph).
        click.echo(
            "this login may not project outbox rows: the running sync workers will (or run "
            "`sigledger graph sync --once` as a member of sigledger_graph)"
        )
        return
    finally:
        progress.close()
        worker.close()
        worker.sink.driver.close()
    click.echo(
        f"projected {total.acked:,} rows, {total.failed} failed attempts, {total.dead} dead ({progress.summary()})"
    )


COMMANDS = (dead, verify, rebuild)
