"""`graph verify --consistent` while a worker is in the middle of a batch: work in flight is told apart from
drift, and real drift is still found. (Plain verify cannot tell them apart: it reports the worker's pending
writes as drift.)"""

from __future__ import annotations

import json
from collections.abc import Callable

from sigledger.graph.sink import Neo4jSink
from sigledger.graph.verify import verify
from sigledger.graph.worker import SyncWorker

from .conftest import Changes, Paused, cli, cypher


def test_consistent_verify_tells_work_in_flight_from_drift(
    changes: Changes, worker_factory: Callable[..., SyncWorker], sink: Neo4jSink, db_dsn: str
) -> None:
    acme = changes.entity("Acme")
    signals = [changes.signal(f"n-{i}", entities=[acme]) for i in range(3)]
    deal = changes.opportunity("Deal", signals=signals[:2])
    worker_factory().run(once=True)
    assert verify(db_dsn, sink, consistent=True).clean

    # A worker holds a batch (new signals, a renamed opportunity) between its snapshot and its write.
    fresh = [changes.signal(f"m-{i}", entities=[acme]) for i in range(2)]
    changes.rename_opportunity(deal, "Deal, renamed")
    paused = Paused(worker_factory()).start()
    try:
        plain = verify(db_dsn, sink)
        assert not plain.clean  # its pending writes look like drift
        assert sorted(plain.missing["signal"]) == sorted(fresh) and plain.stale["opportunity"] == [deal]

        consistent = verify(db_dsn, sink, consistent=True)
        assert consistent.clean, consistent.as_dict()
        assert sorted(consistent.in_flight["signal"]) == sorted(fresh)
        assert consistent.in_flight["opportunity"] == [deal]

        # Real drift next to the work in flight: found, and only that.
        cypher(sink, "MATCH (s:Signal {id: $id}) SET s.content = 'edited in Neo4j'", id=signals[2])
        run = cli("graph", "verify", "--consistent", "--json", dsn=db_dsn)
        assert run.returncode == 3, run.stdout + run.stderr
        report = json.loads(run.stdout)
        assert report["stale"]["signal"] == [signals[2]] and report["missing"]["signal"] == []
        assert report["totals"]["in_flight"] == 3
    finally:
        paused.release()
    assert verify(db_dsn, sink).stale["signal"] == [signals[2]]
