"""Prometheus metrics, in two places (docs/operations.md, Metrics):

- In the application process (``REGISTRY``): the breaker, budget decisions and overruns, the cost buffer, the
  graph workers of this process. An application serves them in one call, ``start_metrics_server()`` (an HTTP
  server thread on DEFAULT_APP_PORT) or mounts ``wsgi_app()`` in its own web server.
- In the database: budgets, the ledger, the quarantine, reservations, alert sinks, the outbox. One exporter,
  ``sigledger metrics serve`` (sigledger.core.db_metrics), reads them at each scrape through
  ``metrics_snapshot()`` as sigledger_readonly, so every process reports the same truth.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, start_http_server

from sigledger.core.errors import SigledgerError

log = logging.getLogger("sigledger.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)

BREAKER_STATE = Gauge(
    "sigledger_breaker_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
    ["breaker"],
    registry=REGISTRY,
)
BREAKER_TRANSITIONS = Counter(
    "sigledger_breaker_transitions_total",
    "Circuit breaker state changes, by the state entered.",
    ["breaker", "state"],
    registry=REGISTRY,
)
BUDGET_DECISIONS = Counter(
    "sigledger_budget_decisions_total",
    "Budget reservations by outcome: reserved, denied (budget exceeded), fail_open (allowed while the "
    "database was unavailable), fail_closed (refused while unavailable).",
    ["outcome"],
    registry=REGISTRY,
)
BUDGET_OVERRUNS = Counter(
    "sigledger_budget_overruns_total",
    "Settlements whose actual cost exceeded the reserved estimate.",
    registry=REGISTRY,
)
COST_FLUSH_SECONDS = Histogram(
    "sigledger_cost_flush_seconds",
    "Time to flush one batch of cost records to the ledger.",
    registry=REGISTRY,
)
COST_RECORDS = Counter(
    "sigledger_cost_records_total",
    "Cost records by outcome: inserted, duplicate (idempotent replay), quarantined, spooled, replayed,"
    " invalid (refused by record(), never acknowledged), rejected (moved to the dead-letter file).",
    ["outcome"],
    registry=REGISTRY,
)
COST_BUFFERED = Gauge(
    "sigledger_cost_buffered_records", "Cost records waiting in memory for the next flush.", registry=REGISTRY
)
COST_SPOOLED = Gauge(
    "sigledger_cost_spooled_records",
    "Cost records in the local spool file awaiting replay.",
    registry=REGISTRY,
)
GRAPH_EVENTS = Counter(
    "sigledger_graph_events_total",
    "Outbox events processed by this process's sync workers, by outcome: synced, retried, dead.",
    ["outcome"],
    registry=REGISTRY,
)

BREAKER_STATE_VALUES = {"closed": 0, "half-open": 1, "half_open": 1, "open": 2}


def breaker_changed(name: str, state: str) -> None:
    """Record a breaker state change (called by the budget guard's listener)."""
    BREAKER_STATE.labels(breaker=name).set(BREAKER_STATE_VALUES.get(state, -1))
    BREAKER_TRANSITIONS.labels(breaker=name, state=state).inc()


#: the application's in-process metrics (start_metrics_server). The Prometheus port allocation range
#: 9100-9999 is full (9187 is postgres_exporter's); these two sit outside it, next to each other.
DEFAULT_APP_PORT = 29188
#: the database exporter (`sigledger metrics serve`)
DEFAULT_EXPORTER_PORT = 29187


class MetricsPortInUse(SigledgerError):
    """The metrics port is taken (another exporter, another instance): pick another one."""


def start_server(registry: CollectorRegistry, port: int, addr: str) -> Any:
    """start_http_server with a clear error instead of a traceback when the port is taken."""
    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise MetricsPortInUse(
                f"cannot serve metrics on {addr}:{port}: {exc.strerror}; choose another port "
                "(--port, or the port argument)"
            ) from None
        raise
    return server


def start_metrics_server(port: int = DEFAULT_APP_PORT, addr: str = "127.0.0.1") -> Any:
    """Serve this process's metrics (REGISTRY) at http://addr:port/metrics from a daemon thread; returns the
    server (``.shutdown()`` stops it). MetricsPortInUse when the port is taken."""
    return start_server(REGISTRY, port, addr)


def wsgi_app() -> Any:
    """A WSGI app serving REGISTRY, to mount under /metrics in the application's own web server."""
    return make_wsgi_app(REGISTRY)
