"""`sigledger metrics serve` on loopback: the outbox gauges reflect the database at scrape time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import psycopg
from sigledger.core.localdb import free_port
from sigledger.core.metrics import BUDGET_DECISIONS, REGISTRY, breaker_changed


def _scrape(port: int) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in scrape:\n{text}")


def test_serve_reports_outbox_backlog(conn: psycopg.Connection, readonly_dsn: str) -> None:
    """Served as sigledger_readonly: the gauges need no table privilege."""
    aggregate = "00000000-0000-0000-0000-0000000000e1"
    for _ in range(3):
        conn.execute("SELECT sigledger._outbox_emit('entity', %s, 'entity.changed', '{}')", (aggregate,))
    conn.execute(
        "UPDATE sigledger.outbox SET dead_at = now() WHERE id = (SELECT min(id) FROM sigledger.outbox)"
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sigledger", "metrics", "serve", "--dsn", readonly_dsn, "--port", str(port)],
        env={**os.environ},
    )
    try:
        text = _scrape(port)
        assert _value(text, "sigledger_database_up") == 1
        assert _value(text, "sigledger_outbox_pending") == 2
        assert _value(text, "sigledger_outbox_dead") == 1
        assert _value(text, "sigledger_outbox_lag_seconds") >= 0
        conn.execute("DELETE FROM sigledger.outbox")
        assert _value(_scrape(port), "sigledger_outbox_pending") == 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_breaker_and_budget_metrics_in_registry() -> None:
    breaker_changed("budget", "open")
    BUDGET_DECISIONS.labels(outcome="fail_open").inc()
    assert REGISTRY.get_sample_value("sigledger_breaker_state", {"breaker": "budget"}) == 2
    assert (
        REGISTRY.get_sample_value(
            "sigledger_breaker_transitions_total", {"breaker": "budget", "state": "open"}
        )
        >= 1
    )
    assert REGISTRY.get_sample_value("sigledger_budget_decisions_total", {"outcome": "fail_open"}) >= 1
    breaker_changed("budget", "closed")
    assert REGISTRY.get_sample_value("sigledger_breaker_state", {"breaker": "budget"}) == 0
