"""`sigledger graph`: the Neo4j projection (outbox sync, status, dead rows, verify, rebuild)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import click
from psycopg.rows import dict_row

from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.core.db import connect as db_connect
from sigledger.graph import rebuild as rebuild_mod
from sigledger.graph.driver import Neo4jSettings, connect
from sigledger.graph.sink import CONSTRAINTS, Neo4jSink
from sigledger.graph.verify import verify as verify_graph
from sigledger.graph.worker import BatchResult, WorkerConfig, make_worker

F = TypeVar("F", bound=Callable[..., Any])
#: application_name of the graph commands' own connections (pg_stat_activity tells them apart)
APP = "sigledger-graph-cli"

DRIFT_EXIT_CODE = 3


def neo4j_options(func: F) -> F:
    defaults = Neo4jSettings.from_env()
    func = click.option(
        "--neo4j-uri", default=defaults.uri, show_default=True, help="Bolt URI [env SIGLEDGER_NEO4J_URI]."
    )(func)
    func = click.option(
        "--neo4j-user", default=defaults.user, show_default=True, help="[env SIGLEDGER_NEO4J_USER]"
    )(func)
    func = click.option(
        "--neo4j-password",
        default=defaults.password,
        help="[env SIGLEDGER_NEO4J_PASSWORD; default: the local test server's]",
    )(func)
    func = click.option(
        "--neo4j-database",
        default=defaults.database,
        show_default=True,
        help="[env SIGLEDGER_NEO4J_DATABASE]",
    )(func)
    return func


def _settings(kw: dict[str, Any]) -> Neo4jSettings:
    return Neo4jSettings(
        uri=kw.pop("neo4j_uri"),
        user=kw.pop("neo4j_user"),
        password=kw.pop("neo4j_password"),
        database=kw.pop("neo4j_database"),
    )


@contextmanager
def _sink(settings: Neo4jSettings) -> Iterator[Neo4jSink]:
    driver = connect(settings)
    try:
        yield Neo4jSink(driver, settings.database)
    finally:
        driver.close()


def _status(dsn: str) -> dict[str, Any]:
    with db_connect(dsn, row_factory=dict_row, application_name=APP) as conn:
        row = conn.execute("SELECT * FROM sigledger.graph_outbox_status()").fetchone()
    assert row is not None
    return dict(row)


def _seconds(value: Any) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


@click.group("graph")
def group() -> None:
    """Neo4j projection: a transactional outbox drained by sync workers."""


@group.command("init")
@neo4j_options
def init(**kw: Any) -> None:
    """Create the Neo4j uniqueness constraints (idempotent)."""
    settings = _settings(kw)
    with _sink(settings) as sink:
        sink.ensure_constraints()
    for stmt in CONSTRAINTS:
        click.echo(stmt)
    click.echo(f"constraints in place on {settings.uri}")


@group.command("sync")
@dsn_option
@neo4j_options
@click.option("--once", "mode", flag_value="once", help="Drain what is due now, then exit.")
@click.option(
    "--follow",
    "mode",
    flag_value="follow",
    default=True,
    help="Keep following the outbox (LISTEN/NOTIFY + polling) until SIGTERM/Ctrl-C. [default]",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes to run side by side.",
)
@click.option(
    "--batch-size", type=click.IntRange(1, 10000), default=WorkerConfig.batch_size, show_default=True
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 1000),
    default=WorkerConfig.max_attempts,
    show_default=True,
    help="Failed attempts before a row is dead.",
)
def sync(dsn: str | None, mode: str, workers: int, batch_size: int, max_attempts: int, **kw: Any) -> None:
    """Project outbox rows into Neo4j."""
    dsn = resolve_dsn(dsn)
    settings = _settings(kw)
    once = mode == "once"
    if workers > 1:
        sys.exit(_run_processes(dsn, settings, workers, once, batch_size, max_attempts))
    config = WorkerConfig(batch_size=batch_size, max_attempts=max_attempts)
    worker = make_worker(dsn, settings, config, name=f"sigledger-graph-sync-{os.getpid()}")
    # SIGTERM / Ctrl-C: finish the batch in flight (its COMMIT), then leave.
    signal.signal(signal.SIGTERM, lambda *_: worker.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop_event.set())
    try:
        if once:
            pending = int(_status(dsn)["pending"])
            with click.progressbar(length=max(pending, 1), label="projecting", file=sys.stderr) as bar:

                def advance(res: BatchResult) -> None:
                    bar.update(res.acked + res.failed)

                total = worker.run(once=True, on_batch=advance)
        else:
            click.echo(f"following the outbox into {settings.uri} (Ctrl-C to stop)", err=True)
            total = worker.run(once=False)
    finally:
        worker.close()
        worker.sink.driver.close()
    click.echo(f"projected {total.acked} rows, {total.failed} failed attempts, {total.dead} now dead")


def _run_processes(
    dsn: str, settings: Neo4jSettings, n: int, once: bool, batch_size: int, max_attempts: int
) -> int:
    env = dict(
        os.environ,
        SIGLEDGER_NEO4J_URI=settings.uri,
        SIGLEDGER_NEO4J_USER=settings.user,
        SIGLEDGER_NEO4J_PASSWORD=settings.password or "",
        SIGLEDGER_NEO4J_DATABASE=settings.database,
    )
    cmd = [
        sys.executable,
        "-m",
        "sigledger.graph.worker",
        "--dsn",
        dsn,
        "--once" if once else "--follow",
        "--batch-size",
        str(batch_size),
        "--max-attempts",
        str(max_attempts),
    ]
    procs = [
        subprocess.Popen([*cmd, "--name", f"sigledger-graph-sync-{os.getpid()}-{i}"], env=env)
        for i in range(n)
    ]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    failed = [c for c in codes if c != 0]
    click.echo(f"{n} workers finished" + (f", {len(failed)} with errors" if failed else ""), err=True)
    return 1 if failed else 0


@group.command("status")
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(dsn: str | None, as_json: bool) -> None:
    """Backlog: pending rows (due now / retrying), dead rows, oldest pending age."""
    st = _status(resolve_dsn(dsn))
    out = {
        "pending": st["pending"],
        "due": st["due"],
        "retrying": st["retrying"],
        "dead": st["dead"],
        "oldest_pending_age_s": _seconds(st["oldest_pending_age"]),
        "oldest_dead_age_s": _seconds(st["oldest_dead_age"]),
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(
        f"pending: {out['pending']} ({out['due']} due now, {out['retrying']} retrying after a failure)"
    )
    click.echo(f"oldest pending age: {out['oldest_pending_age_s'] if out['pending'] else '-'} s")
    click.echo(f"dead: {out['dead']}" + (" (see `sigledger graph dead list`)" if out["dead"] else ""))


@group.group("dead")
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


def _print_drift(drift: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(drift.as_dict()))
        return
    checked = ", ".join(f"{n} {k}" for k, n in drift.checked.items())
    if drift.clean:
        click.echo(f"clean: Neo4j matches Postgres ({checked})")
        return
    t = drift.totals()
    click.echo(f"DRIFT: {t['missing']} missing, {t['extra']} extra, {t['stale']} stale ({checked} checked)")
    for what in ("missing", "extra", "stale"):
        for kind, ids in getattr(drift, what).items():
            for i in ids[:20]:
                why = drift.details.get(f"{kind} {i}")
                click.echo(f"  {what}\t{kind} {i}" + (f"\t{why}" if why else ""))
            if len(ids) > 20:
                click.echo(f"  {what}\t{kind}: {len(ids) - 20} more")


@group.command("verify")
@dsn_option
@neo4j_options
@click.option("--json", "as_json", is_flag=True)
def verify(dsn: str | None, as_json: bool, **kw: Any) -> None:
    """Diff Postgres against Neo4j: missing, extra, stale. Exit 3 on drift."""
    dsn = resolve_dsn(dsn)
    pending = int(_status(dsn)["pending"])
    with _sink(_settings(kw)) as sink:
        drift = verify_graph(dsn, sink)
    _print_drift(drift, as_json)
    if not as_json and pending:
        click.echo(f"note: {pending} outbox rows are still pending; drift may be work in flight", err=True)
    if not drift.clean:
        sys.exit(DRIFT_EXIT_CODE)


@group.command("rebuild")
@dsn_option
@neo4j_options
@click.option("--dry-run", is_flag=True, help="Only show what would be refreshed and deleted.")
@click.option("--no-drain", is_flag=True, help="Only enqueue; leave the projection to the running workers.")
@click.option(
    "--batch-size", type=click.IntRange(1, 10000), default=WorkerConfig.batch_size, show_default=True
)
def rebuild(dsn: str | None, dry_run: bool, no_drain: bool, batch_size: int, **kw: Any) -> None:
    """Re-project every aggregate through the outbox and delete nodes Postgres does not have."""
    dsn = resolve_dsn(dsn)
    settings = _settings(kw)
    with _sink(settings) as sink:
        with click.progressbar(length=3, label="comparing", file=sys.stderr) as bar:
            seen: set[str] = set()

            def kind_done(kind: str, _n: int) -> None:
                if kind not in seen:
                    seen.add(kind)
                    bar.update(1)

            the_plan = rebuild_mod.plan(dsn, sink, progress=kind_done)
        summary = the_plan.as_dict()
        click.echo(
            f"refresh: {summary['refresh']}  delete: {summary['delete']}  "
            f"drift before: {summary['drift_before']}"
        )
        if dry_run:
            click.echo("dry run: nothing enqueued")
            return
        enqueued = rebuild_mod.enqueue(dsn, sink, the_plan)
        click.echo(f"enqueued {enqueued} refresh rows")
    if no_drain:
        return
    worker = make_worker(dsn, settings, replace(WorkerConfig(), batch_size=batch_size))
    try:
        pending = int(_status(dsn)["pending"])
        with click.progressbar(length=max(pending, 1), label="projecting", file=sys.stderr) as bar:
            total = worker.run(once=True, on_batch=lambda res: bar.update(res.acked + res.failed))
    finally:
        worker.close()
        worker.sink.driver.close()
    click.echo(f"projected {total.acked} rows, {total.failed} failed attempts, {total.dead} dead")
