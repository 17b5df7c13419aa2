"""Fixtures for the Neo4j projection tests: one real Neo4j per run, a wiped graph per test, and the small
SQL helpers that produce changes (rows + outbox events in one transaction).

The helpers stand in for the ingestion API of issue 4 (ingest_signal, merge_opportunities, ...): they write
the same tables and emit through the same sigledger._outbox_emit, in the same transaction. They are kept in
this one place so the tests can be re-pointed at the real API by changing only this file.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sigledger.core.localdb import free_port
from sigledger.graph.driver import Neo4jSettings, connect
from sigledger.graph.neo4j_server import Neo4jServer
from sigledger.graph.sink import Neo4jSink, Snapshot
from sigledger.graph.worker import SyncWorker, WorkerConfig, make_worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def neo4j_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Neo4jServer]:
    """A real Neo4j 5.26 (embedded launcher) on a free loopback port, auth on, for the whole run."""
    server = Neo4jServer(
        state_dir=tmp_path_factory.mktemp("neo4j"),
        port=free_port(),
        password="test-" + secrets.token_hex(8),
        heap="384m",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def neo4j_settings(neo4j_server: Neo4jServer, monkeypatch: pytest.MonkeyPatch) -> Neo4jSettings:
    # A test that stopped the server and failed before restarting it must not break the next one.
    if neo4j_server.pid() is None:
        neo4j_server.start()
    assert neo4j_server.password is not None
    monkeypatch.setenv("SIGLEDGER_NEO4J_URI", neo4j_server.uri)
    monkeypatch.setenv("SIGLEDGER_NEO4J_USER", neo4j_server.user)
    monkeypatch.setenv("SIGLEDGER_NEO4J_PASSWORD", neo4j_server.password)
    return Neo4jSettings(uri=neo4j_server.uri, user=neo4j_server.user, password=neo4j_server.password)


@pytest.fixture
def sink(neo4j_settings: Neo4jSettings) -> Iterator[Neo4jSink]:
    """The projection's Neo4j side, emptied (community edition has one user database: tests share it)."""
    driver = connect(neo4j_settings)
    s = Neo4jSink(driver, neo4j_settings.database)
    s.wipe()
    for name in ("poison_entity_type",):
        driver.execute_query(f"DROP CONSTRAINT {name} IF EXISTS")
    s.ensure_constraints()
    yield s
    driver.close()


@pytest.fixture
def worker_factory(db_dsn: str, neo4j_settings: Neo4jSettings, sink: Neo4jSink) -> Iterator[Any]:
    made: list[SyncWorker] = []

    def make(**config: Any) -> SyncWorker:
        # A name of its own: tests find (and terminate) one worker's backend by application_name.
        name = f"graph-test-worker-{len(made)}"
        w = make_worker(db_dsn, neo4j_settings, WorkerConfig(**config), name=name)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
        w.sink.driver.close()


def cypher(sink: Neo4jSink, query: str, **params: Any) -> list[dict[str, Any]]:
    records, _, _ = sink.driver.execute_query(query, params, database_=sink.database)  # type: ignore[arg-type]
    return [r.data() for r in records]


def graph_state(sink: Neo4jSink) -> tuple[list[Any], list[Any]]:
    """Every node (labels, properties without sync_version) and relationship, sorted: for equality checks."""
    # The meta node and the tombstones are the projection's bookkeeping, not part of what the graph shows.
    nodes = cypher(
        sink,
        "MATCH (n) WHERE NOT n:SigledgerGraph AND NOT n:SigledgerTombstone "
        "RETURN labels(n) AS labels, properties(n) AS props",
    )
    rels = cypher(sink, "MATCH (a)-[r]->(b) RETURN a.id AS a, type(r) AS t, b.id AS b")
    norm_nodes = sorted(
        (sorted(n["labels"]), sorted((k, repr(v)) for k, v in n["props"].items() if k != "sync_version"))
        for n in nodes
    )
    norm_rels = sorted((r["a"], r["t"], r["b"]) for r in rels)
    return norm_nodes, norm_rels


def status(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as c:
        cur = c.execute("SELECT * FROM sigledger.graph_outbox_status()")
        row = cur.fetchone()
        assert row is not None and cur.description is not None
        return dict(zip([d.name for d in cur.description], row, strict=True))


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll until predicate() is true; the timeout only bounds a hang, it is not a measured duration."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for: {what}")


def worker_process(dsn: str, log: Path, *args: str, name: str | None = None) -> subprocess.Popen[bytes]:
    """A real worker process (python -m sigledger.graph.worker), Neo4j settings from the environment; its
    output goes to ``log`` (a file, so a chatty worker can never block on a full pipe)."""
    env = dict(os.environ, SIGLEDGER_LOG_LEVEL="INFO")
    cmd = [sys.executable, "-m", "sigledger.graph.worker", "--dsn", dsn, *args]
    if name:
        cmd += ["--name", name]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    """The real `sigledger` command line, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "sigledger", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, SIGLEDGER_DSN=dsn),
        timeout=600,
    )


class Changes:
    """Produces changes through the issue-4 API (create_entity, ingest_signal, create_opportunity,
    link_signals, merge_opportunities, merge_entities), each call in its own transaction, like an application.
    Two changes the API has no function for (renaming an opportunity, deleting a signal) are written directly,
    with their outbox event in the same transaction."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.names: dict[str, str] = {}  # entity id -> name (ingest_signal takes mention names)

    def close(self) -> None:
        self.conn.close()

    def _one(self, sql: str, params: Sequence[Any]) -> Any:
        row = self.conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row[0]

    def entity(self, name: str, entity_type: str = "org", aliases: Sequence[str] = ()) -> str:
        ident = str(
            self._one(
                "SELECT sigledger.create_entity(p_name => %s, p_aliases => %s::text[], p_entity_type => %s)",
                (name, list(aliases), entity_type),
            )
        )
        self.names[ident] = name
        return ident

    def signal(
        self, external_id: str, entities: Sequence[str] = (), source: str = "news", content: str | None = None
    ) -> str:
        return str(
            self._one(
                "SELECT signal_id FROM sigledger.ingest_signal(p_source => %s, p_external_id => %s, "
                "p_occurred_at => now(), p_payload => %s::jsonb, p_mentions => %s::text[], p_content => %s)",
                (
                    source,
                    external_id,
                    '{"tags": ["a", "b"]}',
                    [self.names[e] for e in entities],
                    content or f"signal {external_id}",
                ),
            )
        )

    def opportunity(self, title: str, signals: Sequence[str] = (), score: float | None = 50.5) -> str:
        ident = str(
            self._one(
                "SELECT sigledger.create_opportunity(p_title => %s, p_score => %s::numeric, "
                "p_value_usd => 1000::numeric)",
                (title, score),
            )
        )
        if signals:
            self.conn.execute(
                "SELECT * FROM sigledger.link_signals(p_opportunity_id => %s::uuid, p_signal_ids => %s::uuid[])",
                (ident, list(signals)),
            )
        return ident

    def merge_opportunities(self, target: str, sources: Sequence[str]) -> None:
        self.conn.execute(
            "SELECT * FROM sigledger.merge_opportunities(p_target => %s::uuid, p_sources => %s::uuid[])",
            (target, list(sources)),
        )

    def merge_entities(self, target: str, sources: Sequence[str]) -> None:
        self.conn.execute(
            "SELECT * FROM sigledger.merge_entities(p_target => %s::uuid, p_sources => %s::uuid[])",
            (target, list(sources)),
        )

    def rename_opportunity(self, ident: str, title: str) -> None:
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE sigledger.opportunities SET title = %s, version = version + 1, updated_at = now() "
                "WHERE id = %s",
                (title, ident),
            )
            self.conn.execute(
                "SELECT sigledger._outbox_emit('opportunity', %s::uuid, 'opportunity.updated')", (ident,)
            )

    def delete_signal(self, ident: str) -> None:
        with self.conn.transaction():
            self.conn.execute("DELETE FROM sigledger.signals WHERE id = %s", (ident,))
            self.conn.execute("SELECT sigledger._outbox_emit('signal', %s::uuid, 'signal.deleted')", (ident,))

    def replay_all(self) -> None:
        """A refresh event for every live aggregate (duplicates of what was already projected)."""
        self.conn.execute("SELECT * FROM sigledger._graph_enqueue_all('test.replay')")


@pytest.fixture
def changes(db_dsn: str) -> Iterator[Changes]:
    c = Changes(db_dsn)
    yield c
    c.close()


class Paused:
    """Runs one batch of ``worker`` in a thread, holding it between its snapshot and its Neo4j write."""

    def __init__(self, worker: SyncWorker) -> None:
        self.worker = worker
        self.snapped = threading.Event()
        self.go = threading.Event()
        self.snapshots: list[Snapshot] = []
        self.outcome: list[Any] = []

        def hold(snaps: Sequence[Snapshot]) -> None:
            self.snapshots = list(snaps)
            self.snapped.set()
            assert self.go.wait(60), "the test never released the paused worker"

        worker.before_write = hold
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.outcome.append(self.worker.run_batch())
        except Exception as exc:  # reported to the test through outcome
            self.outcome.append(exc)

    def start(self) -> Paused:
        self.thread.start()
        assert self.snapped.wait(60), f"the paused worker never reached its write: {self.outcome}"
        return self

    def release(self) -> Any:
        self.go.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        return self.outcome[0]
