"""`sigledger metrics`: Prometheus metrics over HTTP."""

from __future__ import annotations

import signal
import threading

import click

from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.core.metrics import DEFAULT_EXPORTER_PORT, MetricsPortInUse
from sigledger.reports.exporter import Limits, serve_database


@click.group("metrics")
def group() -> None:
    """Prometheus metrics for operators.

    `serve` exports what lives in the database (budgets, ledger, quarantine, reservations, alert sinks,
    outbox); an application serves its own process metrics with sigledger.core.metrics.start_metrics_server().
    """


@group.command("serve")
@dsn_option
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_EXPORTER_PORT, show_default=True)
@click.option("--addr", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--max-groups",
    type=click.IntRange(0, 1000),
    default=100,
    show_default=True,
    help="Org/team budgets exported one by one (the fullest first).",
)
@click.option(
    "--top-agents",
    type=click.IntRange(0, 1000),
    default=20,
    show_default=True,
    help="Agent budgets exported one by one (the fullest first); all are counted by state.",
)
@click.option(
    "--top-models",
    type=click.IntRange(0, 1000),
    default=20,
    show_default=True,
    help="Models with series of their own in today's ledger gauges; the rest is 'other'.",
)
def serve(dsn: str | None, port: int, addr: str, max_groups: int, top_agents: int, top_models: int) -> None:
    """Serve /metrics until SIGTERM or Ctrl-C; every gauge is read from the database at scrape time
    (log in as sigledger_readonly, on the primary or a replica)."""
    try:
        server = serve_database(resolve_dsn(dsn), port, addr, Limits(max_groups, top_agents, top_models))
    except MetricsPortInUse as exc:
        raise click.BadParameter(str(exc), param_hint="--port") from None
    click.echo(f"serving metrics on http://{addr}:{port}/metrics")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
