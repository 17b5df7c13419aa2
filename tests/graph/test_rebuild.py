"""`graph rebuild` converges from any state of the graph: extra nodes of any version (other ids, ids that are no
UUID, no id at all, a merged aggregate shown with a huge version), duplicate and foreign relationships, wrong
properties carrying versions far above anything this database handed out, a wiped graph. One test each:
damage, verify sees it, rebuild, verify is clean and the graph is what it was before the damage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sigledger.graph import rebuild
from sigledger.graph.sink import GraphIdentityError, Neo4jSink
from sigledger.graph.verify import verify
from sigledger.graph.worker import SyncWorker

from .conftest import Changes, cypher, graph_state, status

HUGE = 10**12  # a version this database will not hand out for a long time (another database's, say)


def _extra_nodes(sink: Neo4jSink, ids: dict[str, str]) -> None:
    cypher(
        sink,
        "CREATE (:Entity {id: randomUUID(), name: 'ghost', sync_version: $huge}), "
        "(:Signal {id: 'not-a-uuid', sync_version: 5}), (:Opportunity {title: 'no id at all'}), "
        "(:Entity {id: $loser, name: 'merged away', sync_version: $huge})",
        huge=HUGE,
        loser=ids["loser"],
    )
    cypher(
        sink, "MATCH (s:Signal {id: $s}), (g:Entity {name: 'ghost'}) CREATE (s)-[:MENTIONS]->(g)", s=ids["s1"]
    )


def _duplicate_relationships(sink: Neo4jSink, ids: dict[str, str]) -> None:
    cypher(
        sink,
        "MATCH (s:Signal {id: $s})-[:MENTIONS]->(e:Entity {id: $e}), (o:Opportunity {id: $o}) "
        "CREATE (s)-[:MENTIONS]->(e), (s)-[:MENTIONS]->(e), (o)-[:INCLUDES]->(s), "
        "(e)-[:MENTIONS]->(s), (s)-[:INCLUDES]->(o)",
        s=ids["s1"],
        e=ids["acme"],
        o=ids["deal"],
    )


def _wrong_properties(sink: Neo4jSink, ids: dict[str, str]) -> None:
    cypher(
        sink,
        "MATCH (e:Entity {id: $e}), (s:Signal {id: $s}), (o:Opportunity {id: $o}) "
        "SET e.name = 'Wrong', e.junk = 1, s.content = 'wrong', o.title = 'Wrong', "
        "    e.sync_version = $huge, s.sync_version = $huge, o.sync_version = $huge "
        "REMOVE e.entity_type, o.status",
        e=ids["acme"],
        s=ids["s1"],
        o=ids["deal"],
        huge=HUGE,
    )


def _wiped(sink: Neo4jSink, ids: dict[str, str]) -> None:
    sink.wipe()


DAMAGE: dict[str, Callable[[Neo4jSink, dict[str, str]], None]] = {
    "extra nodes of any version": _extra_nodes,
    "duplicate and foreign relationships": _duplicate_relationships,
    "wrong properties at a huge version": _wrong_properties,
    "wiped graph": _wiped,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_rebuild_converges(
    damage: str, changes: Changes, worker_factory: Callable[..., SyncWorker], sink: Neo4jSink, db_dsn: str
) -> None:
    acme, globex, loser = changes.entity("Acme"), changes.entity("Globex"), changes.entity("Loser")
    s1 = changes.signal("n-1", entities=[acme, globex])
    s2 = changes.signal("n-2", entities=[loser])
    deal = changes.opportunity("Deal", signals=[s1, s2])
    changes.merge_entities(acme, [loser])
    worker = worker_factory()
    worker.run(once=True)
    assert verify(db_dsn, sink).clean
    before = graph_state(sink)

    DAMAGE[damage](sink, {"acme": acme, "loser": loser, "s1": s1, "deal": deal})
    damaged = verify(db_dsn, sink)
    assert not damaged.clean

    plan = rebuild.plan(db_dsn, sink)
    rebuild.enqueue(db_dsn, sink, plan)
    total: Any = worker.run(once=True)
    assert total.failed == 0

    after = verify(db_dsn, sink)
    assert after.clean, after.as_dict()
    assert graph_state(sink) == before


class _Died(Exception):
    """Stands in for a rebuild process that dies at this point."""


@pytest.mark.parametrize("dies", ["when writing the graph's meta node", "right after the meta node"])
def test_a_rebuild_that_dies_midway_leaves_its_refreshes_for_the_workers_or_a_rerun(
    dies: str,
    changes: Changes,
    worker_factory: Callable[..., SyncWorker],
    sink: Neo4jSink,
    db_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The new epoch and its refreshes commit together in Postgres, before the graph is told: a rebuild dying
    after the meta node was written leaves the refreshes to the workers; one dying when writing it leaves a
    graph the workers refuse (the epochs differ) with the refreshes waiting, and a rerun converges."""
    acme = changes.entity("Acme")
    s1 = changes.signal("n-1", entities=[acme])
    deal = changes.opportunity("Deal", signals=[s1])
    worker = worker_factory()
    worker.run(once=True)
    before = graph_state(sink)
    _wrong_properties(sink, {"acme": acme, "s1": s1, "deal": deal})

    def die(*_args: Any, **_kw: Any) -> None:
        raise _Died(dies)

    monkeypatch.setattr(
        sink, "adopt" if dies == "when writing the graph's meta node" else "delete_without_id", die
    )
    with pytest.raises(_Died):
        rebuild.enqueue(db_dsn, sink, rebuild.plan(db_dsn, sink))
    monkeypatch.undo()
    assert status(db_dsn)["pending"] == 3  # the refreshes wait in the outbox, whatever the graph says

    if dies == "when writing the graph's meta node":
        with pytest.raises(GraphIdentityError):  # the graph still holds the old epoch: nothing is written
            worker.run(once=True)
        assert status(db_dsn)["pending"] == 3
        rebuild.enqueue(db_dsn, sink, rebuild.plan(db_dsn, sink))
    total: Any = worker.run(once=True)
    assert total.failed == 0

    assert status(db_dsn)["pending"] == 0
    after = verify(db_dsn, sink)
    assert after.clean, after.as_dict()
    assert graph_state(sink) == before
