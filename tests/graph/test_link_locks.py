"""What a signal write locks in Neo4j, and what orders it against a merge of an entity it links to
(docs/graph.md, "Why a stale snapshot never wins", point 4; cypher.upsert_query).

A write links its node to its targets with CREATE under its own node's lock: the target gets a shared lock,
so two writes linking the same entity run side by side (a relationship MERGE took an exclusive lock on the
entity: every batch of fresh signals queued behind the other worker's batch), while a merge or delete of the
entity, which takes the entity's exclusive lock, is still ordered against the write.

Each test holds one write open in an explicit Neo4j transaction (its statements ran, its COMMIT not yet) and
runs the other writer meanwhile.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from sigledger.graph.sink import Neo4jSink, Snapshot, WritePlan

from .conftest import cypher

# Bounds a hang (a write waiting for the open transaction's locks): the server ends the transaction then.
HANG = 30.0


def _signal(sid: str, version: int, links: list[str]) -> Snapshot:
    return Snapshot(
        "signal", sid, "present", version, {"id": sid, "source": "t", "external_id": sid}, tuple(links)
    )


def _entity(eid: str, version: int) -> Snapshot:
    return Snapshot("entity", eid, "present", version, {"id": eid, "name": eid, "entity_type": "org"})


def _ids(n: int) -> list[str]:
    return sorted(str(uuid.uuid4()) for _ in range(n))


class OpenWrite:
    """A sink write whose statements ran in a transaction that is not committed yet."""

    def __init__(self, sink: Neo4jSink, snapshots: list[Snapshot]) -> None:
        self.session = sink.driver.session(database=sink.database)
        self.tx = self.session.begin_transaction(timeout=HANG)
        for query, params in WritePlan.of(snapshots).statements():
            self.tx.run(query, params).consume()

    def commit(self) -> None:
        try:
            self.tx.commit()
        finally:
            self.session.close()


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except Exception as exc:  # reported to the test
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def test_two_writes_link_one_entity_without_waiting_for_each_other(sink: Neo4jSink) -> None:
    """Two workers' batches of fresh signals mention the same entities: neither waits for the other's
    commit. (With a relationship MERGE, the second write waited for the entity's exclusive lock until the
    first committed, here: until the server ended it, HANG seconds later.)"""
    entity, s1, s2 = _ids(3)
    sink.write([_entity(entity, 1)])
    quick = Neo4jSink(sink.driver, sink.database, write_timeout=HANG)

    first = OpenWrite(sink, [_signal(s1, 2, [entity])])
    try:
        quick.write([_signal(s2, 3, [entity])])  # while the first still holds its locks
    finally:
        first.commit()

    rows = cypher(
        sink, "MATCH (s:Signal)-[r:MENTIONS]->(e:Entity {id: $e}) RETURN s.id AS s ORDER BY s", e=entity
    )
    assert [r["s"] for r in rows] == sorted([s1, s2])


def test_a_link_written_while_its_entity_is_merged_away_ends_on_the_winner(sink: Neo4jSink) -> None:
    """A signal write links S to L and has not committed; meanwhile the merge W <- L is projected (it must
    take L's exclusive lock: it waits, or loses a deadlock and is retried by the driver). Whichever commits
    first, the merge moves S's link to W or S's write fails and is retried; after S's next write (the merge
    emitted an event for S), S mentions W only, L has no node, and no relationship points nowhere."""
    winner, loser, s = _ids(3)
    sink.write([_entity(winner, 1), _entity(loser, 2)])

    write = OpenWrite(sink, [_signal(s, 3, [loser])])
    merge = [Snapshot("entity", loser, "absent", 4, winner_id=winner), _entity(winner, 4)]
    thread, outcome = _in_thread(lambda: sink.write(merge))
    committed: Exception | None = None
    try:
        write.commit()
    except Exception as exc:  # lost against the merge: the worker would retry the batch
        committed = exc
    thread.join(2 * HANG)
    assert not thread.is_alive()
    assert outcome == [None], outcome
    if committed is not None:
        sink.write([_signal(s, 3, [loser])])  # the retry of the stale write: a stub L, refused nowhere

    sink.write([_signal(s, 5, [winner])])  # S's next write, from the merge's event
    assert cypher(sink, "MATCH (:Signal {id: $s})-[r]->(e) RETURN type(r) AS t, e.id AS e", s=s) == [
        {"t": "MENTIONS", "e": winner}
    ]
    assert cypher(sink, "MATCH (e:Entity) RETURN e.id AS id ORDER BY id") == [{"id": winner}]
    assert cypher(
        sink, "MATCH (t:SigledgerTombstone {key: $k}) RETURN t.merged_into AS w", k=f"entity:{loser}"
    ) == [{"w": winner}]
