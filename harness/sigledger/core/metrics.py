"""Prometheus metrics for what operators watch: the breaker, budget denials, the cost buffer, the outbox.

Process metrics live in one registry (``REGISTRY``) that an application can mount or serve with
``sigledger metrics serve``. Database-derived gauges (outbox backlog, lag, dead rows) are read on each scrape
by ``OutboxCollector``, so every process reports the same truth and none has to keep it in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


# Through the API function, so the metrics process may run as sigledger_readonly (no table privilege).
_OUTBOX_QUERY = """
SELECT pending, coalesce(extract(epoch FROM oldest_pending_age), 0), dead
  FROM sigledger.graph_outbox_status()
"""


class OutboxCollector(Collector):
    """Outbox backlog, age of the oldest pending event (sync lag) and dead rows, read at scrape time."""

    def __init__(self, dsn: str, *, timeout: float = 5.0) -> None:
        self.dsn = dsn
        self.timeout = timeout

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("sigledger_database_up", "1 when the last scrape could read the database.")
        try:
            with psycopg.connect(
                self.dsn,
                connect_timeout=int(self.timeout),
                application_name="sigledger-metrics",
                autocommit=True,
            ) as conn:
                conn.execute(
                    "SELECT set_config('statement_timeout', %s, false)", (f"{int(self.timeout * 1000)}ms",)
                )
                row = conn.execute(_OUTBOX_QUERY).fetchone()
        except psycopg.Error as exc:
            log.warning("metrics scrape could not read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        assert row is not None
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("sigledger_outbox_pending", "Outbox events not yet projected.", value=row[0])
        yield GaugeMetricFamily(
            "sigledger_outbox_lag_seconds", "Age of the oldest pending outbox event.", value=float(row[1])
        )
        yield GaugeMetricFamily("sigledger_outbox_dead", "Outbox events in the dead state.", value=row[2])


def serve(port: int, *, addr: str = "127.0.0.1", dsn: str | None = None) -> Any:
    """Expose REGISTRY (plus the outbox gauges when a dsn is given) over HTTP; returns the server."""
    if dsn:
        REGISTRY.register(OutboxCollector(dsn))
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server
