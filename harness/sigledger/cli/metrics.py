"""`sigledger metrics`: Prometheus metrics over HTTP."""

from __future__ import annotations

import signal
import threading

import click

from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.core.metrics import serve as serve_metrics


@click.group("metrics")
def group() -> None:
    """Prometheus metrics for operators."""


@group.command("serve")
@dsn_option
@click.option("--port", type=click.IntRange(1, 65535), default=9187, show_default=True)
@click.option("--addr", default="127.0.0.1", show_default=True, help="Address to listen on.")
def serve(dsn: str | None, port: int, addr: str) -> None:
    """Serve /metrics until SIGTERM or Ctrl-C (outbox backlog, lag and dead rows read on each scrape)."""
    server = serve_metrics(port, addr=addr, dsn=resolve_dsn(dsn))
    click.echo(f"serving metrics on http://{addr}:{port}/metrics")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
