"""`sigledger demo` end to end against the test cluster: the report's invariants checked against the database
itself, and a clean shutdown on SIGINT/SIGTERM that loses no acknowledged cost."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sigledger import demo
from sigledger.core.localdb import LocalCluster, free_port
from sigledger.graph.neo4j_server import Neo4jServer

ROOT = Path(__file__).resolve().parent.parent.parent


def ledger_by_agent(dsn: str, agent_ids: list[str]) -> dict[str, tuple[Decimal, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT agent_id::text, sum(cost_usd), count(*) FROM sigledger.llm_cost_log"
            " WHERE agent_id = ANY(%s::uuid[]) GROUP BY agent_id",
            (agent_ids,),
        ).fetchall()
    return {r[0]: (Decimal(r[1]), int(r[2])) for r in rows}


def open_holds(dsn: str, agent_ids: list[str]) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM sigledger.budget_reservation WHERE agent_id = ANY(%s::uuid[]) AND state = 'open'",
            (agent_ids,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def check_ledger_matches(dsn: str, report: dict[str, Any]) -> None:
    """Every cost the demo was told about is in the ledger, and nothing else."""
    agents = report["agents"]
    ledger = ledger_by_agent(dsn, [a["id"] for a in agents.values()])
    for name, a in agents.items():
        total, count = ledger.get(a["id"], (Decimal(0), 0))
        assert total == Decimal(a["acknowledged_usd"]), name
        assert count == a["records"], name
    assert open_holds(dsn, [a["id"] for a in agents.values()]) == 0


def check_budgets(report: dict[str, Any]) -> None:
    assert report["budgets"], "no budget in the report"
    for b in report["budgets"]:
        spent, excess, cap = Decimal(b["spent_usd"]), Decimal(b["excess_usd"]), Decimal(b["cap_usd"])
        assert spent - excess <= cap, b  # nothing admitted above the cap
        assert spent == Decimal(b["acknowledged_usd"]), b  # recorded spend = acknowledged costs
        assert Decimal(b["reserved_usd"]) == 0, b  # no hold left open
        outcomes = (
            b["settled"]
            + b["denied"]
            + b["released"]
            + b["fail_open"]
            + b["refused_unavailable"]
            + b["deferred"]
        )
        assert outcomes == b["calls"], b
        assert b["denied_by_team"] <= b["denied"]
    assert report["reconcile"] == []


def test_demo_end_to_end(db_dsn: str, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    cfg = demo.DemoConfig(
        seed=3,
        calls=150,
        signals=500,
        workers=6,
        small_agents=8,
        outage_seconds=0.5,
        latency_ms=(5, 40),
        batch_size=100,
        status_interval=0.2,
        spool_dir=tmp_path,
        # Half the default sizing: on a loaded machine the breaker stays open past the 0.5 s outage and refuses
        # many calls, and at full sizing the budgets then did not always run out (team denied 0).
        limit_scale=Decimal("0.5"),
    )
    path = tmp_path / "report.json"
    code = demo.run(cfg, dsn=db_dsn, out=out, err=err, report_json=path)
    report = json.loads(path.read_text())
    assert report["violations"] == [], out.getvalue()
    assert code == 0
    assert report["interrupted"] is None
    check_budgets(report)
    check_ledger_matches(db_dsn, report)

    team = next(b for b in report["budgets"] if b["level"] == "team")
    agents = [b for b in report["budgets"] if b["level"] == "agent"]
    assert len(agents) == 9  # the hot one and the small ones (the embedder has no budget)
    assert team["calls"] == sum(b["calls"] for b in agents) == report["calls"]["started"] == 150
    assert team["spent_usd"] == str(sum((Decimal(b["spent_usd"]) for b in agents), Decimal(0)))
    assert team["denied"] > 0  # the budgets are sized to run out
    assert team["errors"] == 0

    ingest = report["ingest"]
    assert ingest["lines"] == 500
    assert ingest["created"] + ingest["duplicates"] + ingest["rejected"] == ingest["lines"]
    assert ingest["created"] > 0 and ingest["entity_links"] > 0
    opp = report["opportunities"]
    assert opp["merges"] > 0 and opp["refused_merges"] == 1
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM sigledger.merge_history WHERE kind = 'opportunity'"
        ).fetchone()
        assert row is not None and row[0] == opp["merges"]
        row = conn.execute("SELECT count(*) FROM sigledger.budget_overruns").fetchone()
        assert row is not None and row[0] == report["overruns"]["count"]
    assert report["tracker"].get("spooled", 0) == 0
    assert not list(tmp_path.glob("costs-*"))  # nothing left in the spool
    text = out.getvalue()
    assert "all checks passed" in text and "reconcile_budgets: no drift" in text


def test_demo_runs_twice_as_the_admin_role(admin_dsn: str, tmp_path: Path) -> None:
    """The API is all the demo needs (sigledger_admin: the application's API plus budget administration, no
    table privilege), and every name carries a per-run token: a second run on the same database does not
    collide."""
    cfg = demo.DemoConfig(
        calls=30,
        signals=100,
        workers=3,
        small_agents=3,
        outage_seconds=0,
        latency_ms=(1, 5),
        spool_dir=tmp_path,
    )
    for _ in range(2):
        out, err = io.StringIO(), io.StringIO()
        assert demo.run(cfg, dsn=admin_dsn, out=out, err=err) == 0, out.getvalue()
        assert "not migrating" in err.getvalue()


def test_local_cluster_database_recreated_each_run(tmp_path: Path) -> None:
    """Without --dsn: a local cluster, its sigledger_demo database dropped and recreated on every run."""
    # a unique root: when the postgres OS user cannot reach tmp_path the cluster lives under /var/tmp, in a
    # folder named after the root's path, which must not be an earlier session's
    cluster = LocalCluster(tmp_path / f"pg-{uuid.uuid4().hex[:8]}")
    cfg = demo.DemoConfig(
        calls=20,
        signals=60,
        workers=2,
        small_agents=2,
        outage_seconds=0,
        latency_ms=(1, 5),
        spool_dir=tmp_path,
    )
    try:
        runs = []
        for _ in range(2):
            out, err = io.StringIO(), io.StringIO()
            path = tmp_path / "report.json"
            code = demo.run(cfg, out=out, err=err, cluster=cluster, report_json=path, with_graph=False)
            assert code == 0, out.getvalue()
            assert "database recreated" in err.getvalue()
            runs.append(json.loads(path.read_text()))
        with psycopg.connect(cluster.dsn(demo.DEMO_DATABASE)) as conn:
            row = conn.execute("SELECT count(*) FROM sigledger.agent_registry").fetchone()
        assert row is not None and row[0] == len(runs[1]["agents"])  # only the second run's agents
        check_ledger_matches(cluster.dsn(demo.DEMO_DATABASE), runs[1])
    finally:
        cluster.stop()
        data_root = cluster.datadir.parent
        if data_root != cluster.root:  # the /var/tmp folder outside tmp_path
            shutil.rmtree(data_root, ignore_errors=True)


@pytest.fixture(scope="module")
def neo4j(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Neo4jServer]:
    """A Neo4j of our own (the demo wipes the local one; this one is nobody else's)."""
    server = Neo4jServer(
        state_dir=tmp_path_factory.mktemp("neo4j"),
        port=free_port(),
        password="demo-" + secrets.token_hex(6),
        heap="384m",
    )
    server.start()
    yield server
    server.stop()


def test_demo_with_the_graph(
    db_dsn: str, tmp_path: Path, neo4j: Neo4jServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dsn with --neo4j-uri: the projection follows the run, is drained and verified without drift."""
    assert neo4j.password is not None
    monkeypatch.setenv("SIGLEDGER_NEO4J_USER", neo4j.user)
    monkeypatch.setenv("SIGLEDGER_NEO4J_PASSWORD", neo4j.password)
    cfg = demo.DemoConfig(
        seed=5,
        calls=60,
        signals=400,
        workers=4,
        small_agents=4,
        outage_seconds=0,
        latency_ms=(5, 30),
        batch_size=100,
        spool_dir=tmp_path,
    )
    out, path = io.StringIO(), tmp_path / "report.json"
    code = demo.run(cfg, dsn=db_dsn, neo4j_uri=neo4j.uri, out=out, err=io.StringIO(), report_json=path)
    report = json.loads(path.read_text())
    assert code == 0, out.getvalue()
    graph = report["graph"]
    assert graph["verify"]["clean"] is True, graph
    assert graph["outbox_pending"] == 0 and graph["dead"] == 0
    assert graph["nodes"]["signal"] == report["ingest"]["created"]
    opp = report["opportunities"]
    assert graph["nodes"]["opportunity"] == opp["opportunities"] - opp["merged_sources"]
    assert "verified: no drift" in out.getvalue()


@pytest.mark.parametrize(
    ("signum", "expected", "graph"),
    [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)],
    ids=["sigint", "sigterm", "sigint-with-graph"],
)
def test_signal_stops_cleanly_and_loses_nothing(
    db_dsn: str,
    tmp_path: Path,
    signum: signal.Signals,
    expected: int,
    graph: bool,
    request: pytest.FixtureRequest,
) -> None:
    path = tmp_path / "report.json"
    cmd = [
        sys.executable, "-m", "sigledger", "demo", "--dsn", db_dsn, "--seed", "11",
        "--calls", "20000", "--signals", "20000", "--workers", "4", "--agents", "6",
        "--latency-ms", "20", "80", "--outage-seconds", "0.5",
        "--spool-dir", str(tmp_path), "--report-json", str(path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if graph:
        server: Neo4jServer = request.getfixturevalue("neo4j")
        cmd += ["--neo4j-uri", server.uri]
        env.update(SIGLEDGER_NEO4J_USER=server.user, SIGLEDGER_NEO4J_PASSWORD=server.password or "")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    # wait until calls have settled and signals are being ingested, then interrupt mid-run
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("[") and " settled " in line and " signals " in line:
            settled = int(line.split(" settled ")[1].split()[0])
            read = int(line.split(" signals ")[1].split("/")[0])
            if settled >= 20 and read > 0:
                break
    else:
        pytest.fail("the demo ended before it showed progress:\n" + "".join(lines))
    time.sleep(0.3)
    proc.send_signal(signum)
    stdout, rest = proc.communicate(timeout=120)
    stderr = "".join(lines) + rest
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    report = json.loads(path.read_text())
    assert report["violations"] == [], stdout
    assert proc.returncode == expected, stdout + stderr
    assert report["interrupted"] == signal.Signals(signum).name
    assert report["calls"]["started"] < report["calls"]["planned"]
    assert f"interrupted by {signal.Signals(signum).name}" in stdout
    check_budgets(report)
    check_ledger_matches(db_dsn, report)
    assert not list(tmp_path.glob("costs-*"))
    if graph:  # the follower stopped after its batch; what it did not project waits in the outbox
        assert report["graph"]["status"].startswith("sync stopped"), report["graph"]
        assert report["graph"]["dead"] == 0
