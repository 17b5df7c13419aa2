"""Metrics: the database exporter (`sigledger metrics serve`, as sigledger_readonly) reads every gauge at scrape
time at bounded cardinality; the application serves its in-process metrics in one call; default ports are
free of other exporters' and a taken port is a clear error."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal

import psycopg
import pytest
from psycopg.types.json import Jsonb
from sigledger.core.localdb import free_port
from sigledger.core.metrics import (
    BUDGET_DECISIONS,
    DEFAULT_APP_PORT,
    DEFAULT_EXPORTER_PORT,
    REGISTRY,
    MetricsPortInUse,
    breaker_changed,
    start_metrics_server,
)
from sigledger.reports.exporter import DB_METRICS, DatabaseCollector

from tests.reports.helpers import ROOT, env


def _scrape(port: int) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _samples(text: str) -> dict[str, float]:
    """'name{labels}' -> value for every sample line, labels in alphabetical order."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            if "{" in key:
                name, labels = key[:-1].split("{", 1)
                key = name + "{" + ",".join(sorted(labels.split(","))) + "}"
            out[key] = float(value)
    return out


def _serve(dsn: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sigledger", "metrics", "serve", "--dsn", dsn, *args], cwd=ROOT, env=env()
    )


def test_serve_reports_outbox_backlog(conn: psycopg.Connection, readonly_dsn: str) -> None:
    """Served as sigledger_readonly: the gauges need no table privilege."""
    aggregate = "00000000-0000-0000-0000-0000000000e1"
    for _ in range(3):
        conn.execute("SELECT sigledger._outbox_emit('entity', %s, 'entity.changed', '{}')", (aggregate,))
    conn.execute(
        "UPDATE sigledger.outbox SET dead_at = now() WHERE id = (SELECT min(id) FROM sigledger.outbox)"
    )
    port = free_port()
    proc = _serve(readonly_dsn, "--port", str(port))
    try:
        text = _samples(_scrape(port))
        assert text["sigledger_database_up"] == 1
        assert text["sigledger_outbox_pending"] == 2
        assert text["sigledger_outbox_dead"] == 1
        assert text["sigledger_outbox_lag_seconds"] >= 0
        conn.execute("DELETE FROM sigledger.outbox")
        assert _samples(_scrape(port))["sigledger_outbox_pending"] == 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_database_gauges_at_bounded_cardinality(conn: psycopg.Connection, readonly_dsn: str) -> None:
    team = conn.execute("SELECT sigledger.create_group_budget('team', 'mx-team', 10)").fetchone()[0]  # type: ignore[index]
    agents = []
    for i in range(5):
        agents.append(
            conn.execute(
                "SELECT sigledger.create_agent(%s, 10, p_parent_budget_id => %s)", (f"mx-{i}", team)
            ).fetchone()[0]  # type: ignore[index]
        )
    conn.execute("SELECT sigledger.reserve_budget(%s, 0.5)", (agents[0],))  # before the team runs out
    for i, agent in enumerate(agents):  # mx-4 the fullest (9 of 10: near), mx-0 at 1 of 10
        conn.execute(
            "SELECT sigledger.record_cost(%s, %s, %s, 'p', 0, 0, %s::numeric)",
            (f"mx-k{i}", agent, f"model-{i % 3}", Decimal(2 * i + 1)),
        )
    conn.execute(
        "SELECT sigledger.record_costs(%s)",
        (
            Jsonb(
                [
                    {
                        "idempotency_key": "mx-bad",
                        "agent_id": str(agents[0]),
                        "model": "m",
                        "provider": "p",
                        "cost_usd": "NaN",
                    }
                ]
            ),
        ),
    )
    port = free_port()
    proc = _serve(readonly_dsn, "--port", str(port), "--top-agents", "2", "--top-models", "1")
    try:
        s = _samples(_scrape(port))
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    agent_series = sorted(
        k for k in s if k.startswith("sigledger_budget_spent_usd{") and 'level="agent"' in k
    )
    assert agent_series == [
        'sigledger_budget_spent_usd{budget="mx-3",level="agent",period="none"}',
        'sigledger_budget_spent_usd{budget="mx-4",level="agent",period="none"}',
    ]
    assert s['sigledger_budget_spent_usd{budget="mx-team",level="team",period="none"}'] == 25
    assert s['sigledger_budget_limit_usd{budget="mx-4",level="agent",period="none"}'] == 10
    assert s['sigledger_budgets{level="agent",state="near"}'] == 1  # mx-4 at 90%
    assert sum(v for k, v in s.items() if k.startswith('sigledger_budgets{level="agent"')) == 5
    assert s['sigledger_budgets{level="team",state="over"}'] == 1  # 25 of 10 (recorded after the fact)
    # one model of its own (the largest today), the others summed as "other"
    models = {k: v for k, v in s.items() if k.startswith("sigledger_ledger_usd_today{")}
    assert models == {
        'sigledger_ledger_usd_today{model="model-1",provider="p"}': 12.0,  # 3 + 9
        'sigledger_ledger_usd_today{model="other",provider="other"}': 13.0,  # model-0 1 + 7, model-2 5
    }
    assert s["sigledger_cost_quarantine_rows"] == 1
    assert s["sigledger_reservations_open"] == 1 and s["sigledger_reservations_overdue"] == 0
    assert s["sigledger_ledger_partition_months_ahead"] >= 2
    assert s["sigledger_ledger_default_partition_rows"] == 0


def test_every_snapshot_metric_is_described(conn: psycopg.Connection) -> None:
    conn.execute("SELECT sigledger.alert_sink_open('webhook:http://example/x')")
    names = {r[0] for r in conn.execute("SELECT metric FROM sigledger.metrics_snapshot()").fetchall()}
    conn.execute("SELECT sigledger.create_agent('md', 1)")
    names |= {r[0] for r in conn.execute("SELECT metric FROM sigledger.metrics_snapshot()").fetchall()}
    assert names == set(DB_METRICS) - {"sigledger_ledger_usd_today", "sigledger_ledger_calls_today"}


def test_unreadable_database_reports_down_and_nothing_else() -> None:
    collector = DatabaseCollector(f"host=127.0.0.1 port={free_port()} dbname=x user=x", timeout=2)
    families = list(collector.collect())
    assert [(f.name, f.samples[0].value) for f in families] == [("sigledger_database_up", 0)]


def test_default_ports_and_a_taken_port(readonly_dsn: str) -> None:
    for port in (DEFAULT_EXPORTER_PORT, DEFAULT_APP_PORT):
        assert not 9100 <= port <= 9999  # the allocated exporter range (9187 is postgres_exporter)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sigledger",
                "metrics",
                "serve",
                "--dsn",
                readonly_dsn,
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env(),
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert (
            f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
        )
        with pytest.raises(MetricsPortInUse, match=f"127.0.0.1:{port}"):
            start_metrics_server(port)


def test_application_serves_its_metrics_in_one_call() -> None:
    breaker_changed("budget", "open")
    BUDGET_DECISIONS.labels(outcome="fail_open").inc()
    assert REGISTRY.get_sample_value("sigledger_breaker_state", {"breaker": "budget"}) == 2
    port = free_port()
    server = start_metrics_server(port)
    try:
        s = _samples(_scrape(port))
    finally:
        server.shutdown()
        server.server_close()
    assert s['sigledger_breaker_state{breaker="budget"}'] == 2
    assert s['sigledger_budget_decisions_total{outcome="fail_open"}'] >= 1
    breaker_changed("budget", "closed")
    assert REGISTRY.get_sample_value("sigledger_breaker_state", {"breaker": "budget"}) == 0
