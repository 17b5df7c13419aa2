"""Deterministic interleavings of two sync workers (docs/graph.md, "Why a stale snapshot never wins").

Worker A is paused between its Postgres snapshot and its Neo4j write (a hook on the worker); while it waits,
Postgres changes and a second worker projects the change. Then A writes its stale snapshot. Whatever A wrote,
once the outbox is drained Neo4j must equal Postgres.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from sigledger.graph.sink import Neo4jSink, Snapshot, WritePlan
from sigledger.graph.verify import verify
from sigledger.graph.worker import SyncWorker

from .conftest import Changes, Paused, cypher, status, wait_until


def _drain(worker: SyncWorker) -> None:
    worker.run(once=True)


def _terminate_backend(db_dsn: str, worker: SyncWorker) -> None:
    """The worker's Postgres session dies (its locks go, its claimed rows are claimable again); the worker
    itself goes on and may still write to Neo4j."""
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (worker.name,),
        )
        wait_until(
            lambda: (
                c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (worker.name,)
                ).fetchone()
                == (0,)
            ),
            30,
            "the worker's backend to go",
        )


def _assert_exact(db_dsn: str, sink: Neo4jSink) -> None:
    assert status(db_dsn)["pending"] == 0
    drift = verify(db_dsn, sink)
    assert drift.clean, drift.as_dict()


def test_stale_signal_write_after_an_entity_merge_cannot_bring_the_loser_back(
    changes: Changes, worker_factory: Callable[..., SyncWorker], sink: Neo4jSink, db_dsn: str
) -> None:
    """The issue's first finding: A reads signal S (mentions L); merge_entities(W <- L) commits and worker B
    projects it (L deleted in Neo4j); then A writes S. A must neither re-create L nor leave S linked to L."""
    winner, loser = changes.entity("Winner Corp"), changes.entity("Loser Corp")
    _drain(worker_factory())
    s = changes.signal("n-1", entities=[loser])

    a = Paused(worker_factory()).start()
    assert [x.links for x in a.snapshots if x.aggregate_id == s] == [(loser,)]
    changes.merge_entities(winner, [loser])
    b = worker_factory()
    _drain(b)  # projects the merge while A still holds its old snapshot of S
    assert cypher(sink, "MATCH (e:Entity {id: $id}) RETURN count(e) AS n", id=loser) == [{"n": 0}]
    assert not isinstance(a.release(), Exception)

    _drain(b)
    assert cypher(sink, "MATCH (e:Entity) RETURN e.id AS id") == [{"id": winner}]
    assert cypher(sink, "MATCH (:Signal {id: $s})-[:MENTIONS]->(e) RETURN e.id AS id", s=s) == [
        {"id": winner}
    ]
    _assert_exact(db_dsn, sink)


def test_stale_signal_write_between_a_merge_and_its_projection(
    changes: Changes, worker_factory: Callable[..., SyncWorker], sink: Neo4jSink, db_dsn: str
) -> None:
    """The other order: A's stale write lands after the merge committed but before B projects it."""
    winner, loser = changes.entity("Winner Corp"), changes.entity("Loser Corp")
    other = changes.entity("Other Corp")
    _drain(worker_factory())
    s = changes.signal("n-1", entities=[loser, other])

    a = Paused(worker_factory()).start()
    changes.merge_entities(winner, [loser])
    assert not isinstance(a.release(), Exception)  # S -> L written after L was merged away in Postgres
    _drain(worker_factory())

    links = cypher(sink, "MATCH (:Signal {id: $s})-[:MENTIONS]->(e) RETURN e.id AS id ORDER BY id", s=s)
    assert [r["id"] for r in links] == sorted([winner, other])
    _assert_exact(db_dsn, sink)


def test_a_worker_whose_session_died_cannot_resurrect_a_merged_opportunity(
    changes: Changes, worker_factory: Callable[..., SyncWorker], sink: Neo4jSink, db_dsn: str
) -> None:
    """A worker whose Postgres backend is terminated mid-batch loses its locks but may still write to Neo4j:
    its write must lose against the newer projection that another worker made meanwhile."""
    target, source = changes.opportunity("Target"), changes.opportunity("Source")
    _drain(worker_factory())
    changes.rename_opportunity(source, "Source, renamed")

    zombie = worker_factory()
    a = Paused(zombie).start()
    _terminate_backend(db_dsn, zombie)
    changes.merge_opportunities(target, [source])
    _drain(worker_factory())  # projects the rename (no longer locked) and the merge: Source is gone
    assert cypher(sink, "MATCH (o:Opportunity) RETURN o.id AS id") == [{"id": target}]

    outcome = a.release()  # the zombie writes its snapshot of Source, then fails to acknowledge
    assert isinstance(outcome, psycopg.OperationalError), outcome
    _drain(worker_factory())

    assert cypher(sink, "MATCH (o:Opportunity) RETURN o.id AS id") == [{"id": target}]
    _assert_exact(db_dsn, sink)


def _due_in(db_dsn: str, entity: str, interval: str) -> None:
    """Moves the entity's outbox rows' next attempt (stands in for a worker reaching them later)."""
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute(
            "UPDATE sigledger.outbox SET next_attempt_at = clock_timestamp() + %s::interval "
            "WHERE aggregate_type = 'entity' AND aggregate_id = %s::uuid",
            (interval, entity),
        )


def test_a_worker_whose_session_died_leaves_no_stub_of_a_winner_merged_away_since(
    changes: Changes, worker_factory: Callable[..., SyncWorker], sink: Neo4jSink, db_dsn: str
) -> None:
    """The zombie read "L merged into W, W present"; meanwhile W was merged into X and B projected that (W's
    tombstone is newer than the zombie's snapshot). The zombie's merge of L must not create W again (as a stub
    its refused upsert of W would leave behind, with nothing left in the outbox to remove it)."""
    x, w, loser = changes.entity("X Corp"), changes.entity("W Corp"), changes.entity("L Corp")
    _drain(worker_factory())
    changes.merge_entities(w, [loser])

    zombie = worker_factory()
    a = Paused(zombie).start()
    assert sorted((s.aggregate_id, s.state, s.winner_id) for s in a.snapshots) == sorted(
        [(loser, "absent", w), (w, "present", None)]
    )
    _terminate_backend(db_dsn, zombie)
    changes.merge_entities(x, [w])
    _due_in(db_dsn, loser, "1 hour")  # B reaches W and X first, L later
    _drain(worker_factory())
    assert cypher(sink, "MATCH (e:Entity) RETURN e.id AS id ORDER BY id") == [
        {"id": i} for i in sorted([x, loser])
    ]

    outcome = a.release()  # merges L into W and upserts W, both from its old snapshot; cannot acknowledge
    assert isinstance(outcome, psycopg.OperationalError), outcome
    _due_in(db_dsn, loser, "0 seconds")
    _drain(worker_factory())

    assert cypher(sink, "MATCH (e:Entity) RETURN e.id AS id, e.sync_version IS NULL AS stub") == [
        {"id": x, "stub": False}
    ]
    _assert_exact(db_dsn, sink)


def test_a_batch_writes_each_aggregate_once() -> None:
    """A winner both claimed and pulled in by its loser's merge is one row of its upsert statement."""
    loser, winner = Snapshot("entity", "l", "absent", 7, winner_id="w"), Snapshot("entity", "w", "present", 7)
    plan = WritePlan.of([loser, winner, winner])
    assert [r["id"] for r in plan.upserts["entity"]] == ["w"]
    assert [r["id"] for r in plan.merges["entity"]] == ["l"]
