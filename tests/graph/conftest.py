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
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness.graph.driver import Neo4jSettings, connect
from harness.graph.neo4j_server import Neo4jServer, free_port
from harness.graph.sink import Neo4jSink
from harness.graph.worker import SyncWorker, WorkerConfig, make_worker

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
    for name in ("poison_entity_name",):
        driver.execute_query(f"DROP CONSTRAINT {name} IF EXISTS")
    s.ensure_constraints()
    yield s
    driver.close()


@pytest.fixture
def worker_factory(db_dsn: str, neo4j_settings: Neo4jSettings, sink: Neo4jSink) -> Iterator[Any]:
    made: list[SyncWorker] = []

    def make(**config: Any) -> SyncWorker:
        w = make_worker(db_dsn, neo4j_settings, WorkerConfig(**config))
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
    nodes = cypher(sink, "MATCH (n) RETURN labels(n) AS labels, properties(n) AS props")
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
    """A real worker process (python -m harness.graph.worker), Neo4j settings from the environment; its
    output goes to ``log`` (a file, so a chatty worker can never block on a full pipe)."""
    env = dict(os.environ, SIGLEDGER_LOG_LEVEL="INFO")
    cmd = [sys.executable, "-m", "harness.graph.worker", "--dsn", dsn, *args]
    if name:
        cmd += ["--name", name]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    """The real `sigledger` command line, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, SIGLEDGER_DSN=dsn),
        timeout=600,
    )


class Changes:
    """Writes rows and their outbox events in one transaction, like the ingestion API does."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=False)

    def close(self) -> None:
        self.conn.close()

    def _emit(self, kind: str, ident: str, event: str) -> None:
        self.conn.execute("SELECT sigledger._outbox_emit(%s, %s::uuid, %s)", (kind, ident, event))

    def entity(self, name: str, entity_type: str = "org", aliases: Sequence[str] = ()) -> str:
        ident = str(uuid.uuid4())
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO sigledger.entities (id, name, entity_type, attributes) VALUES (%s, %s, %s, %s)",
                (ident, name, entity_type, '{"origin": "test"}'),
            )
            for alias in aliases:
                self.conn.execute(
                    "INSERT INTO sigledger.entity_aliases (canonical_entity_id, alias) VALUES (%s, %s)",
                    (ident, alias),
                )
            self._emit("entity", ident, "entity.created")
        return ident

    def signal(
        self, external_id: str, entities: Sequence[str] = (), source: str = "news", content: str | None = None
    ) -> str:
        ident = str(uuid.uuid4())
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO sigledger.signals (id, source, external_id, occurred_at, content, payload) "
                "VALUES (%s, %s, %s, now(), %s, %s)",
                (ident, source, external_id, content or f"signal {external_id}", '{"tags": ["a", "b"]}'),
            )
            for e in entities:
                self.conn.execute(
                    "INSERT INTO sigledger.signal_entities (signal_id, entity_id, mention) VALUES (%s, %s, %s)",
                    (ident, e, "mention"),
                )
            self._emit("signal", ident, "signal.ingested")
        return ident

    def opportunity(self, title: str, signals: Sequence[str] = (), score: float | None = 50.5) -> str:
        ident = str(uuid.uuid4())
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO sigledger.opportunities (id, title, score, value_usd) VALUES (%s, %s, %s, 1000)",
                (ident, title, score),
            )
            for s in signals:
                self.conn.execute(
                    "INSERT INTO sigledger.opportunity_signals (opportunity_id, signal_id) VALUES (%s, %s)",
                    (ident, s),
                )
            self._emit("opportunity", ident, "opportunity.created")
        return ident

    def rename_opportunity(self, ident: str, title: str) -> None:
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE sigledger.opportunities SET title = %s, version = version + 1, updated_at = now() "
                "WHERE id = %s",
                (title, ident),
            )
            self._emit("opportunity", ident, "opportunity.updated")

    def merge_opportunities(self, target: str, sources: Sequence[str]) -> None:
        """Links move to the target without duplicates; sources keep a tombstone (as issue 4 specifies)."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO sigledger.opportunity_signals (opportunity_id, signal_id) "
                "SELECT %s, signal_id FROM sigledger.opportunity_signals WHERE opportunity_id = ANY(%s::uuid[]) "
                "ON CONFLICT DO NOTHING",
                (target, list(sources)),
            )
            self.conn.execute(
                "DELETE FROM sigledger.opportunity_signals WHERE opportunity_id = ANY(%s::uuid[])",
                (list(sources),),
            )
            self.conn.execute(
                "UPDATE sigledger.opportunities SET status = 'merged', merged_into = %s, merged_at = now(), "
                "version = version + 1 WHERE id = ANY(%s::uuid[])",
                (target, list(sources)),
            )
            self.conn.execute(
                "UPDATE sigledger.opportunities SET version = version + 1 WHERE id = %s", (target,)
            )
            for s in sources:
                self._emit("opportunity", s, "opportunity.merged")
            self._emit("opportunity", target, "opportunity.merged")

    def merge_entities(self, target: str, source: str, move_mentions: bool) -> None:
        """Entity merge: the loser keeps a tombstone; its mentions move to the winner when ``move_mentions``."""
        with self.conn.transaction():
            if move_mentions:
                self.conn.execute(
                    "INSERT INTO sigledger.signal_entities (signal_id, entity_id) "
                    "SELECT signal_id, %s FROM sigledger.signal_entities WHERE entity_id = %s "
                    "ON CONFLICT DO NOTHING",
                    (target, source),
                )
                self.conn.execute("DELETE FROM sigledger.signal_entities WHERE entity_id = %s", (source,))
            self.conn.execute(
                "UPDATE sigledger.entities SET merged_into = %s, version = version + 1 WHERE id = %s",
                (target, source),
            )
            self._emit("entity", source, "entity.merged")

    def delete_signal(self, ident: str) -> None:
        with self.conn.transaction():
            self.conn.execute("DELETE FROM sigledger.signals WHERE id = %s", (ident,))
            self._emit("signal", ident, "signal.deleted")

    def replay_all(self) -> None:
        """Duplicate every event that was ever emitted for a live aggregate (a replay)."""
        with self.conn.transaction():
            self.conn.execute("SELECT * FROM sigledger._graph_enqueue_all('test.replay')")


@pytest.fixture
def changes(db_dsn: str) -> Iterator[Changes]:
    c = Changes(db_dsn)
    yield c
    c.close()
