"""Faults with real processes: Neo4j stopped during ingestion, a worker SIGKILLed mid-batch, two workers."""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import neo4j
import psycopg
from sigledger.graph.driver import Neo4jSettings
from sigledger.graph.neo4j_server import Neo4jServer
from sigledger.graph.sink import Neo4jSink
from sigledger.graph.verify import verify

from .conftest import Changes, cli, cypher, status, wait_until, worker_process


def _stop(proc: Any) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return int(proc.wait(timeout=60))


def test_neo4j_down_ingestion_unaffected_backlog_drains_after_restart(
    neo4j_server: Neo4jServer,
    neo4j_settings: Neo4jSettings,
    sink: Neo4jSink,
    changes: Changes,
    db_dsn: str,
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    worker = worker_process(db_dsn, log, "--follow", "--poll-interval", "0.2")
    try:
        first = changes.entity("Before the outage")
        wait_until(lambda: status(db_dsn)["pending"] == 0, 60, "the first change to be projected")
        sink.driver.close()

        neo4j_server.stop()
        # Ingestion goes on: every change commits, with its outbox row, while Neo4j is down.
        entities = [changes.entity(f"During {i}") for i in range(20)]
        signals = [changes.signal(f"d-{i}", entities=random.sample(entities, 2)) for i in range(30)]
        changes.opportunity("Outage deal", signals=signals[:5])
        wait_until(lambda: "unreachable" in log.read_text(), 60, "the worker to hit the outage")
        st = status(db_dsn)
        assert st["pending"] == 52  # the backlog grew by every change (20 + 30 + created + linked)
        assert st["dead"] == 0 and st["retrying"] == 0  # an outage is not charged to the rows
        assert worker.poll() is None  # the worker waits it out

        neo4j_server.start()
        wait_until(lambda: status(db_dsn)["pending"] == 0, 180, "the backlog to drain after the restart")
        assert status(db_dsn)["dead"] == 0
        result = cli("graph", "verify", dsn=db_dsn)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "clean" in result.stdout
    finally:
        assert _stop(worker) == 0, log.read_text()
    del first


def _worker_backend(dsn: str, name: str) -> tuple[Any, ...] | None:
    """(pid, xact_start) of the worker's batch connection while it is inside a transaction that wrote."""
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(
            "SELECT pid, xact_start FROM pg_stat_activity WHERE application_name = %s "
            "AND backend_xid IS NOT NULL",
            (name,),
        ).fetchone()


def test_worker_sigkilled_mid_batch_loses_nothing(
    neo4j_settings: Neo4jSettings, sink: Neo4jSink, changes: Changes, db_dsn: str, tmp_path: Path
) -> None:
    hub = changes.entity("Hub")
    first_worker = worker_process(db_dsn, tmp_path / "w0.log", "--once")
    assert first_worker.wait(timeout=120) == 0
    signals = [changes.signal(f"k-{i}", entities=[hub]) for i in range(200)]
    with psycopg.connect(db_dsn, autocommit=True) as c:  # the hub changes too: its node is in the batch
        c.execute("UPDATE sigledger.entities SET name = 'Hub 2' WHERE id = %s", (hub,))
        c.execute("SELECT sigledger._outbox_emit('entity', %s::uuid, 'entity.updated')", (hub,))

    # Hold a write lock on the hub's node: the worker's Neo4j transaction will wait for it, mid-batch.
    blocker_driver = neo4j.GraphDatabase.driver(
        neo4j_settings.uri, auth=(neo4j_settings.user, neo4j_settings.password)
    )
    session = blocker_driver.session(database=neo4j_settings.database)
    blocker = session.begin_transaction()
    blocker.run("MATCH (e:Entity {id: $id}) SET e.locked_by_test = true", id=hub).consume()
    name = "graph-test-victim"
    victim = worker_process(db_dsn, tmp_path / "victim.log", "--follow", "--batch-size", "1000", name=name)
    try:
        wait_until(lambda: _worker_backend(db_dsn, name) is not None, 60, "the victim to claim a batch")
        claimed = _worker_backend(db_dsn, name)
        # Still the same transaction a moment later: it is stuck inside the batch, not between batches.
        wait_until(
            lambda: (
                cypher(
                    sink,
                    "SHOW TRANSACTIONS YIELD status WHERE status STARTS WITH 'Blocked' RETURN count(*) AS n",
                )[0]["n"]
                >= 1
            ),
            60,
            "the victim to block in Neo4j",
        )
        assert _worker_backend(db_dsn, name) == claimed
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        blocker.rollback()
        session.close()
        blocker_driver.close()
        if victim.poll() is None:
            victim.kill()
            victim.wait()

    # Its Postgres transaction is rolled back: every row is still there, untouched.
    wait_until(lambda: _worker_backend(db_dsn, name) is None, 60, "the victim's backend to roll back")
    st = status(db_dsn)
    assert st["pending"] == len(signals) + 1 and st["retrying"] == 0 and st["dead"] == 0

    survivor = worker_process(db_dsn, tmp_path / "survivor.log", "--once")
    assert survivor.wait(timeout=300) == 0, (tmp_path / "survivor.log").read_text()
    assert status(db_dsn)["pending"] == 0
    assert cypher(sink, "MATCH (:Signal)-[r:MENTIONS]->(:Entity {name: 'Hub 2'}) RETURN count(r) AS n") == [
        {"n": 200}
    ]
    assert verify(db_dsn, sink).clean


def test_two_workers_at_once_end_clean(
    sink: Neo4jSink, changes: Changes, db_dsn: str, tmp_path: Path
) -> None:
    rng = random.Random(5)
    entities = [changes.entity(f"E{i}") for i in range(30)]
    signals = [changes.signal(f"s-{i}", entities=rng.sample(entities, 3)) for i in range(300)]
    opps = [changes.opportunity(f"O{i}", signals=rng.sample(signals, 8)) for i in range(30)]
    changes.merge_opportunities(opps[0], opps[1:4])
    changes.merge_opportunities(opps[10], opps[11:13])
    changes.replay_all()  # plenty of duplicates for both workers to race on
    assert status(db_dsn)["pending"] > 700

    workers = [
        worker_process(db_dsn, tmp_path / f"w{i}.log", "--once", "--batch-size", "40", name=f"w{i}")
        for i in range(2)
    ]
    for i, w in enumerate(workers):
        assert w.wait(timeout=600) == 0, (tmp_path / f"w{i}.log").read_text()

    assert status(db_dsn) | {"oldest_pending_age": None} == {
        "pending": 0,
        "due": 0,
        "retrying": 0,
        "dead": 0,
        "oldest_pending_age": None,
        "oldest_dead_age": None,
    }
    assert cypher(sink, "MATCH (o:Opportunity) RETURN count(o) AS n") == [{"n": 25}]
    drift = verify(db_dsn, sink)
    assert drift.clean, drift.as_dict()


def test_listen_notify_wakes_a_follower_and_polling_catches_unnotified_rows(
    sink: Neo4jSink, changes: Changes, db_dsn: str, tmp_path: Path
) -> None:
    # Poll interval of an hour: only a notification can wake this follower within the wait below.
    log = tmp_path / "notified.log"
    worker = worker_process(db_dsn, log, "--follow", "--poll-interval", "3600", name="graph-test-listener")
    try:
        wait_until(lambda: _listening(db_dsn, "graph-test-listener-listen"), 60, "the follower to LISTEN")
        changes.entity("Woken by NOTIFY")
        wait_until(lambda: status(db_dsn)["pending"] == 0, 60, "the notified change to be projected")
    finally:
        assert _stop(worker) == 0, log.read_text()

    # A row that arrives without a notification is found by the polling fallback.
    log = tmp_path / "polling.log"
    worker = worker_process(db_dsn, log, "--follow", "--poll-interval", "0.2")
    try:
        with psycopg.connect(db_dsn, autocommit=True) as c:
            e = c.execute(
                "INSERT INTO sigledger.entities (name) VALUES ('Found by polling') RETURNING id::text"
            ).fetchone()
            assert e is not None
            c.execute(
                "INSERT INTO sigledger.outbox (aggregate_type, aggregate_id, event_type) "
                "VALUES ('entity', %s, 'no-notify')",
                (e[0],),
            )
        wait_until(lambda: status(db_dsn)["pending"] == 0, 60, "polling to find the unnotified row")
    finally:
        assert _stop(worker) == 0, log.read_text()
    assert {r["n"] for r in cypher(sink, "MATCH (e:Entity) RETURN e.name AS n")} == {
        "Woken by NOTIFY",
        "Found by polling",
    }


def _listening(dsn: str, application_name: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'idle'",
            (application_name,),
        ).fetchone()
    return bool(row and row[0])
