"""The demo's Neo4j side: a sync worker follows the outbox while the demo runs, then drains it and verifies.

- Neo4j: the local server of ``make neo4j-up`` (``sigledger.graph.neo4j_server``; started if needed, its graph
  wiped first: like the demo database, it is the demo's scratch copy), or an existing one (``--neo4j-uri``,
  credentials from SIGLEDGER_NEO4J_USER / SIGLEDGER_NEO4J_PASSWORD; never wiped).
- The server starts in the background while Postgres work begins (ingestion never waits for Neo4j); once it
  answers, one worker follows the outbox (LISTEN/NOTIFY) in a thread.
- ``finish()``: stop the follower (it commits its batch in flight); unless interrupted, drain what is left
  (``run(once=True)``) and ``verify`` Postgres against Neo4j. Interrupted: the outbox keeps the rest, nothing
  is lost, the next ``sigledger graph sync`` projects it.
- A Neo4j that cannot be started or reached is reported, never fatal for the Postgres side; drift after a
  full drain is a failed check.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, TextIO

import psycopg

from sigledger.graph import neo4j_server
from sigledger.graph.driver import Neo4jSettings
from sigledger.graph.verify import verify
from sigledger.graph.worker import BatchResult, SyncWorker, WorkerConfig, make_worker

log = logging.getLogger("sigledger.demo.graph")


class GraphProjection:
    def __init__(self, dsn: str, neo4j_uri: str | None, err: TextIO, stop: threading.Event) -> None:
        self.dsn = dsn  # the sync calls internal functions: the owner's (or a superuser's) DSN
        self.neo4j_uri = neo4j_uri
        self.err = err
        self.stop = stop
        self.worker: SyncWorker | None = None
        self.settings: Neo4jSettings | None = None
        self.error: str | None = None
        self.projected = 0
        self.failed = 0
        self.dead = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-graph", daemon=True)
        self._thread.start()

    def _connect(self) -> SyncWorker:
        if self.neo4j_uri is None:
            server = neo4j_server.from_env()
            neo4j_server.ensure_free_port(server)
            server.start()  # builds the launcher on first use; returns at once when it is up
            settings = dataclasses.replace(
                Neo4jSettings.from_env(), uri=server.uri, user=server.user, password=server.password
            )
        else:
            settings = dataclasses.replace(Neo4jSettings.from_env(), uri=self.neo4j_uri)
        self.settings = settings
        worker = make_worker(self.dsn, settings, WorkerConfig(batch_size=500), name="sigledger-demo-graph")
        if self.neo4j_uri is None:
            # The local server is the demo's scratch projection, like its database (recreated every run: a new
            # identity, never projected): emptied, meta node included; the first write makes it this run's.
            worker.sink.wipe()
        return worker

    def _run(self) -> None:
        try:
            worker = self._connect()
        except Exception as exc:  # reported; the Postgres side goes on without Neo4j
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self._ready.set()
            return
        self.worker = worker
        self._ready.set()
        if self.stop.is_set():
            return
        try:
            worker.run(once=False, on_batch=self._count)
        except Exception as exc:
            self.error = f"sync stopped: {type(exc).__name__}: {exc}"

    def _count(self, res: BatchResult) -> None:
        with self._lock:
            self.projected += res.acked
            self.failed += res.failed
            self.dead += res.dead

    def status(self) -> str:
        if self.error:
            return "graph down"
        if self.worker is None:
            return "graph starting"
        return f"graph {self.projected}"

    def finish(self, interrupted: bool) -> dict[str, Any]:
        """Stop following; unless interrupted, drain and verify. Returns the report's graph section."""
        if not interrupted:
            self.err.write("graph: waiting for Neo4j\n" if not self._ready.is_set() else "")
            while not self._ready.wait(0.5):
                if self.stop.is_set():
                    break
        worker = self.worker
        if worker is not None:
            worker.stop_event.set()
        if self._thread is not None and self._ready.is_set():
            self._thread.join(timeout=60)  # the follower commits its batch in flight, then returns
        # else: still starting Neo4j (interrupted): the daemon thread is left behind, the server keeps running
        result: dict[str, Any] = {
            "uri": self.settings.uri if self.settings else self.neo4j_uri,
            "local": self.neo4j_uri is None,
        }
        if worker is None:
            result["status"] = f"unavailable ({self.error or 'not started'})"
            result["outbox_pending"] = outbox_pending(self.dsn)
            return result
        try:
            if interrupted or self.stop.is_set():
                result["status"] = "sync stopped (interrupted); the outbox keeps the rest"
            else:
                self.err.write("graph: draining the outbox and verifying\n")
                worker.stop_event.clear()
                self._count(worker.run(once=True))
                drift = verify(self.dsn, worker.sink)
                result["verify"] = {"clean": drift.clean, "checked": drift.checked, **drift.totals()}
                result["nodes"] = worker.sink.counts()
                if drift.clean:
                    checked = sum(drift.checked.values())
                    result["status"] = f"verified: no drift ({checked} aggregates checked against Neo4j)"
                else:
                    result["status"] = f"DRIFT: {drift.totals()}"
                    result["details"] = dict(list(drift.details.items())[:5])
        except Exception as exc:
            result["status"] = f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        finally:
            worker.close()
            worker.sink.driver.close()
        result["projected"] = self.projected
        result["failed_attempts"] = self.failed
        result["dead"] = self.dead
        result["outbox_pending"] = outbox_pending(self.dsn)
        if self.error:
            result["error"] = self.error
        return result


def outbox_pending(dsn: str) -> int | None:
    """Outbox rows not yet projected (the outbox table is private: None when this role may not read it)."""
    try:
        with psycopg.connect(dsn, application_name="sigledger-demo") as conn:
            row = conn.execute("SELECT pending FROM sigledger.graph_outbox_status()").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None
