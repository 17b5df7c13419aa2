"""The database exporter behind `sigledger metrics serve`: at each scrape, one connection (as
sigledger_readonly), one call of ``metrics_snapshot()`` and one of ``graph_outbox_status()``, mapped to gauges.

Cardinality is bounded by the snapshot's arguments (top budgets, top models; the rest aggregated), so a
deployment with many agents does not explode Prometheus' series count. A scrape that cannot read the database
reports ``sigledger_database_up 0`` and nothing else (the last values are not repeated as if fresh). At start,
``serve_database`` reads once: an unreachable database is ``Unavailable`` (the CLI's exit 69), not an exporter
that serves zeros.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sigledger.core.db import connect
from sigledger.core.errors import SigledgerError
from sigledger.core.metrics import DEFAULT_EXPORTER_PORT, start_server

log = logging.getLogger("sigledger.metrics")

#: every gauge metrics_snapshot() returns, with its help text and labels (a test keeps SQL and this in step)
DB_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sigledger_budget_limit_usd": ("Budget limit per period (USD).", ("level", "budget", "period")),
    "sigledger_budget_spent_usd": ("Spent in the current period (USD).", ("level", "budget", "period")),
    "sigledger_budget_reserved_usd": ("Held by open reservations (USD).", ("level", "budget", "period")),
    "sigledger_budget_used_ratio": (
        "(spent + reserved) / limit in the current period (0 for a zero limit).",
        ("level", "budget", "period"),
    ),
    "sigledger_budgets": (
        "Budgets by level and state: ok, near (>= 80%), at_limit, over.",
        ("level", "state"),
    ),
    "sigledger_ledger_usd_today": (
        "USD recorded today (UTC) per model; the rest as other.",
        ("provider", "model"),
    ),
    "sigledger_ledger_calls_today": ("Ledger rows recorded today (UTC) per model.", ("provider", "model")),
    "sigledger_cost_quarantine_rows": ("Quarantined cost rows not yet re-submitted.", ()),
    "sigledger_reservations_open": ("Open budget reservations.", ()),
    "sigledger_reservations_overdue": ("Open reservations past their expiry (the sweep releases them).", ()),
    "sigledger_alert_sink_pending": ("Budget alerts not yet delivered to the sink.", ("sink",)),
    "sigledger_ledger_partition_months_ahead": ("Monthly ledger partitions after the current month.", ()),
    "sigledger_ledger_default_partition_rows": ("Rows in the ledger's DEFAULT partition (should be 0).", ()),
}
OUTBOX_METRICS = {
    "sigledger_outbox_pending": "Outbox events not yet projected to Neo4j.",
    "sigledger_outbox_lag_seconds": "Age of the oldest pending outbox event.",
    "sigledger_outbox_dead": "Outbox events in the dead state.",
}

_SNAPSHOT = (
    "SELECT metric, labels, value FROM sigledger.metrics_snapshot(p_max_groups => %s::integer,"
    " p_top_agents => %s::integer, p_top_models => %s::integer)"
)
_OUTBOX = "SELECT pending, coalesce(extract(epoch FROM oldest_pending_age), 0), dead FROM sigledger.graph_outbox_status()"


@dataclass
class Limits:
    max_groups: int = 100
    top_agents: int = 20
    top_models: int = 20


class DatabaseCollector(Collector):
    """Reads every database gauge at scrape time (bounded by the statement timeout)."""

    def __init__(self, dsn: str, *, limits: Limits | None = None, timeout: float = 10.0) -> None:
        self.dsn = dsn
        self.limits = limits or Limits()
        self.timeout = timeout

    def describe(self) -> list[Any]:
        return []

    def read(self) -> tuple[list[tuple[str, dict[str, str], float]], tuple[Any, ...]]:
        with connect(
            self.dsn, connect_timeout=self.timeout, application_name="sigledger-metrics", autocommit=True
        ) as conn:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", (f"{int(self.timeout * 1000)}ms",)
            )
            snapshot = conn.execute(
                _SNAPSHOT, (self.limits.max_groups, self.limits.top_agents, self.limits.top_models)
            ).fetchall()
            outbox = conn.execute(_OUTBOX).fetchone()
        assert outbox is not None
        return [(m, dict(labels), float(v)) for m, labels, v in snapshot if v is not None], outbox

    def collect(self) -> Iterator[GaugeMetricFamily]:
        started = time.monotonic()
        up = GaugeMetricFamily("sigledger_database_up", "1 when the last scrape could read the database.")
        try:
            snapshot, outbox = self.read()
        except (psycopg.Error, SigledgerError) as exc:
            log.warning("metrics scrape could not read the database: %s", " ".join(str(exc).split()))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        families: dict[str, GaugeMetricFamily] = {}
        for name, (help_text, label_names) in DB_METRICS.items():
            families[name] = GaugeMetricFamily(name, help_text, labels=list(label_names))
        for name, labels, value in snapshot:
            family = families.get(name)
            if family is None:
                log.warning("metrics_snapshot returned an unknown metric %s (skipped)", name)
                continue
            family.add_metric([str(labels.get(k, "")) for k in DB_METRICS[name][1]], value)
        yield from families.values()
        for (name, help_text), value in zip(OUTBOX_METRICS.items(), outbox, strict=True):
            yield GaugeMetricFamily(name, help_text, value=float(value))
        yield GaugeMetricFamily(
            "sigledger_scrape_duration_seconds",
            "Time this scrape spent reading the database.",
            value=time.monotonic() - started,
        )


def serve_database(
    dsn: str, port: int = DEFAULT_EXPORTER_PORT, addr: str = "127.0.0.1", limits: Limits | None = None
) -> Any:
    """The exporter: a registry of its own holding only the database collector; returns the HTTP server."""
    collector = DatabaseCollector(dsn, limits=limits)
    collector.read()  # Unavailable (host, port, cause) or a privilege error now, not at the first scrape
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return start_server(registry, port, addr)
