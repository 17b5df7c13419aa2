"""`sigledger graph`: the Neo4j projection (outbox sync, status; dead rows, verify and rebuild in graph_repair).

Exit codes: 0 ok; 1 an error (Neo4j unreachable, credentials, a graph of another database or epoch); 2 bad
usage; 3 the state is not what it should be (`status` past its lag or dead threshold, `verify` found drift).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import click

from sigledger.cli import exit_codes, graph_repair
from sigledger.cli.graph_common import Progress, neo4j_options, open_sink, outbox_status, settings_of
from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.graph.driver import Neo4jSettings
from sigledger.graph.sink import CONSTRAINTS
from sigledger.graph.worker import BatchResult, WorkerConfig, make_worker

NOT_OK_EXIT_CODE = exit_codes.ATTENTION
DEFAULT_MAX_LAG = 60.0  # seconds; SIGLEDGER_GRAPH_MAX_LAG


def _seconds(value: Any) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


@click.group("graph")
def group() -> None:
    """Neo4j projection: a transactional outbox drained by sync workers."""


@group.command("init")
@neo4j_options
def init(**kw: Any) -> None:
    """Create the Neo4j uniqueness constraints (idempotent)."""
    settings = settings_of(kw)
    with open_sink(settings) as sink:
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
    """Project outbox rows into Neo4j. With --once: progress and a rate on a terminal, a summary line always."""
    dsn = resolve_dsn(dsn)
    settings = settings_of(kw)
    once = mode == "once"
    if workers > 1:
        sys.exit(_run_processes(dsn, settings, workers, once, batch_size, max_attempts))
    config = WorkerConfig(batch_size=batch_size, max_attempts=max_attempts)
    worker = make_worker(dsn, settings, config, name=f"sigledger-graph-sync-{os.getpid()}")
    # SIGTERM / Ctrl-C: finish the batch in flight (its COMMIT), then leave.
    signal.signal(signal.SIGTERM, lambda *_: worker.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop_event.set())
    progress = Progress("projecting", int(outbox_status(dsn)["due"]) if once else None)
    try:
        if not once:
            click.echo(f"following the outbox into {settings.uri} (Ctrl-C to stop)", err=True)

        def advance(res: BatchResult) -> None:
            progress.advance(res.acked + res.failed)

        total = worker.run(once=once, on_batch=advance if once else None)
    finally:
        progress.close()
        worker.close()
        worker.sink.driver.close()
    click.echo(
        f"projected {total.acked:,} rows, {total.failed} failed attempts, {total.dead} now dead"
        + (f" ({progress.summary()})" if once else "")
    )


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
    before = int(outbox_status(dsn)["pending"])
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
    # The workers report nothing to this process: on a terminal, progress is read from the outbox itself.
    progress = Progress(f"projecting ({n} workers)", before if once else None)
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            if once and progress.live:
                progress.advance(max(0, before - int(outbox_status(dsn)["pending"])) - progress.done)
    finally:
        progress.close()
    codes = [p.wait() for p in procs]
    failed = [c for c in codes if c != 0]
    if once:
        progress.advance(max(0, before - int(outbox_status(dsn)["pending"])) - progress.done)
    summary = f", outbox down by {progress.summary()}" if once else ""
    click.echo(
        f"{n} workers finished" + (f", {len(failed)} with errors" if failed else "") + summary, err=True
    )
    return 1 if failed else 0


@group.command("status")
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--max-lag",
    type=click.FloatRange(min=0),
    envvar="SIGLEDGER_GRAPH_MAX_LAG",
    default=DEFAULT_MAX_LAG,
    show_default=True,
    show_envvar=True,
    help="Exit 3 when the oldest pending row is older than this many seconds.",
)
@click.option(
    "--max-dead",
    type=click.IntRange(min=0),
    envvar="SIGLEDGER_GRAPH_MAX_DEAD",
    default=None,
    show_envvar=True,
    help="Exit 3 when more rows than this are dead. [default: not checked]",
)
def status(dsn: str | None, as_json: bool, max_lag: float, max_dead: int | None) -> None:
    """Backlog: pending rows (due now / retrying), oldest pending age, dead rows. Exit 3 past a threshold."""
    st = outbox_status(resolve_dsn(dsn))
    age = _seconds(st["oldest_pending_age"]) if st["pending"] else None
    problems = []
    if age is not None and age > max_lag:
        problems.append(f"oldest pending row is {age:,.1f} s old (threshold {max_lag:g} s)")
    if max_dead is not None and st["dead"] > max_dead:
        problems.append(f"{st['dead']} dead rows (threshold {max_dead})")
    out = {
        "pending": st["pending"],
        "due": st["due"],
        "retrying": st["retrying"],
        "dead": st["dead"],
        "oldest_pending_age_s": age,
        "oldest_dead_age_s": _seconds(st["oldest_dead_age"]),
        "max_lag_s": max_lag,
        "max_dead": max_dead,
        "ok": not problems,
        "problems": problems,
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(
            f"pending: {out['pending']} ({out['due']} due now, {out['retrying']} retrying after a failure)"
        )
        click.echo(
            "oldest pending: none (nothing pending)" if age is None else f"oldest pending age: {age:,.1f} s"
        )
        click.echo(f"dead: {out['dead']}" + (" (see `sigledger graph dead list`)" if out["dead"] else ""))
        for problem in problems:
            click.echo(f"NOT OK: {problem}")
    if problems:
        sys.exit(NOT_OK_EXIT_CODE)


for _command in graph_repair.COMMANDS:
    group.add_command(_command)
