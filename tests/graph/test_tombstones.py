"""Tombstones and the fence (docs/graph.md): a deleted aggregate leaves a tombstone that refuses older
snapshots; tombstones are collected once the fence makes every older snapshot impossible."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sigledger.graph.sink import GraphIdentityError, Neo4jSink, Snapshot, Stamp
from sigledger.graph.worker import SyncWorker

from .conftest import Changes, cypher


def _stamp(worker: SyncWorker) -> Stamp:
    conn = worker._connection()
    with conn.transaction():
        row = conn.execute("SELECT * FROM sigledger._graph_identity()").fetchone()
    return Stamp(str(row.database_id), int(row.epoch), bool(row.written))


def test_a_tombstone_refuses_older_snapshots_and_the_fence_lets_it_go(
    changes: Changes, worker_factory: Callable[..., SyncWorker], sink: Neo4jSink
) -> None:
    target, source = changes.opportunity("Target"), changes.opportunity("Source")
    worker = worker_factory(tombstone_ttl=0.0, tombstone_interval=0.0, tombstone_grace=0.0)
    worker.run(once=True)
    changes.merge_opportunities(target, [source])
    worker.run(once=True)
    [tomb] = cypher(sink, "MATCH (t:SigledgerTombstone) RETURN t.key AS key, t.sync_version AS v")
    assert tomb["key"] == f"opportunity:{source}"

    # An older snapshot of the merged opportunity (a slow worker's) is refused: no node comes back.
    stamp = _stamp(worker)
    stale = Snapshot("opportunity", source, "present", tomb["v"] - 1, {"id": source, "title": "Back?"}, ())
    sink.write([stale], stamp)
    assert cypher(sink, "MATCH (o:Opportunity {id: $id}) RETURN count(o) AS n", id=source) == [{"n": 0}]

    # Collection: the fence rises to a version read at least tombstone_ttl ago (0 here); once it has stood
    # for the grace period (0 here), the tombstones at or below it go, and a batch read before the fence can
    # no longer commit anything.
    worker.collect_tombstones()
    fence = cypher(sink, "MATCH (m:SigledgerGraph) RETURN m.fence AS f")[0]["f"]
    assert fence >= tomb["v"]
    assert sink.tombstones() == 1  # the fence has only just risen
    worker.collect_tombstones()
    assert sink.tombstones() == 0
    with pytest.raises(GraphIdentityError, match="older than the graph's fence"):
        sink.write([stale], stamp)
    assert cypher(sink, "MATCH (o:Opportunity {id: $id}) RETURN count(o) AS n", id=source) == [{"n": 0}]
