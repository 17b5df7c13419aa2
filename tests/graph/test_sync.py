"""The projection against a real Neo4j: what a sync writes, merges, replays, old versions, poison rows."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sigledger.graph.driver import GraphAuthError, GraphUnavailable, Neo4jSettings, connect
from sigledger.graph.sink import Neo4jSink, Snapshot
from sigledger.graph.verify import verify
from sigledger.graph.worker import WorkerConfig, make_worker

from .conftest import Changes, cypher, graph_state, status


def test_ingest_then_sync_shows_the_same_graph(
    changes: Changes, worker_factory: Any, sink: Neo4jSink, db_dsn: str
) -> None:
    acme = changes.entity("Acme", aliases=["ACME Inc", "Acme Corp"])
    globex = changes.entity("Globex", entity_type="company")
    s1 = changes.signal("n-1", entities=[acme, globex])
    s2 = changes.signal("n-2", entities=[acme])
    opp = changes.opportunity("Acme expansion", signals=[s1, s2])
    assert status(db_dsn)["pending"] == 6  # 2 entities, 2 signals, opportunity created + linked

    total = worker_factory().run(once=True)

    assert total.acked == 6 and total.failed == 0
    assert status(db_dsn)["pending"] == 0
    [ent] = cypher(
        sink,
        "MATCH (e:Entity {id: $id}) RETURN e.name AS name, e.aliases AS aliases, "
        "e.entity_type AS t, e.attributes AS attrs",
        id=acme,
    )
    assert ent == {
        "name": "Acme",
        "aliases": ["ACME Inc", "Acme", "Acme Corp"],  # the name is an alias too (create_entity)
        "t": "org",
        "attrs": "{}",
    }
    mentions = cypher(
        sink, "MATCH (s:Signal)-[:MENTIONS]->(e:Entity) RETURN s.external_id AS s, e.name AS e ORDER BY s, e"
    )
    assert mentions == [{"s": "n-1", "e": "Acme"}, {"s": "n-1", "e": "Globex"}, {"s": "n-2", "e": "Acme"}]
    [o] = cypher(
        sink,
        "MATCH (o:Opportunity {id: $id}) RETURN o.title AS title, o.score AS score, "
        "o.status AS status, COLLECT { MATCH (o)-[:INCLUDES]->(s) RETURN s.id ORDER BY s.id } "
        "AS signals",
        id=opp,
    )
    assert o == {"title": "Acme expansion", "score": 50.5, "status": "open", "signals": sorted([s1, s2])}
    assert verify(db_dsn, sink).clean


def test_update_and_delete_propagate(
    changes: Changes, worker_factory: Any, sink: Neo4jSink, db_dsn: str
) -> None:
    s1 = changes.signal("n-1")
    opp = changes.opportunity("Old title", signals=[s1])
    worker = worker_factory()
    worker.run(once=True)
    changes.rename_opportunity(opp, "New title")
    changes.delete_signal(s1)  # cascades the opportunity link in Postgres; a delete in Neo4j
    changes.rename_opportunity(opp, "New title")  # re-read: its link set is now empty
    worker.run(once=True)
    assert cypher(sink, "MATCH (o:Opportunity) RETURN o.title AS t") == [{"t": "New title"}]
    assert cypher(sink, "MATCH (s:Signal) RETURN count(s) AS n") == [{"n": 0}]
    assert cypher(sink, "MATCH ()-[r:INCLUDES]->() RETURN count(r) AS n") == [{"n": 0}]
    assert verify(db_dsn, sink).clean


def test_merge_propagates_loser_gone_links_on_winner(
    changes: Changes, worker_factory: Any, sink: Neo4jSink, db_dsn: str
) -> None:
    s1, s2, s3 = (changes.signal(f"n-{i}") for i in range(3))
    winner = changes.opportunity("Winner", signals=[s1])
    loser_a = changes.opportunity("Loser A", signals=[s2, s1])
    loser_b = changes.opportunity("Loser B", signals=[s3])
    worker = worker_factory()
    worker.run(once=True)
    assert cypher(sink, "MATCH (o:Opportunity) RETURN count(o) AS n") == [{"n": 3}]

    changes.merge_opportunities(winner, [loser_a, loser_b])
    worker.run(once=True)

    assert cypher(sink, "MATCH (o:Opportunity) RETURN o.id AS id") == [{"id": winner}]
    links = cypher(sink, "MATCH (o:Opportunity)-[:INCLUDES]->(s) RETURN s.id AS s ORDER BY s")
    assert [r["s"] for r in links] == sorted([s1, s2, s3])  # moved, no duplicates
    assert verify(db_dsn, sink).clean


def test_merge_processed_loser_first_still_moves_links(
    changes: Changes, worker_factory: Any, sink: Neo4jSink, db_dsn: str
) -> None:
    """Only the loser's event is delivered: the winner is refreshed in the same Neo4j transaction."""
    s1, s2 = changes.signal("n-1"), changes.signal("n-2")
    winner = changes.opportunity("Winner", signals=[s1])
    loser = changes.opportunity("Loser", signals=[s2])
    worker = worker_factory()
    worker.run(once=True)
    changes.merge_opportunities(winner, [loser])
    with psycopg.connect(db_dsn, autocommit=True) as c:  # drop the winner's own event
        c.execute("DELETE FROM sigledger.outbox WHERE aggregate_id = %s", (winner,))
    worker.run(once=True)
    links = cypher(
        sink, "MATCH (o:Opportunity {id: $w})-[:INCLUDES]->(s) RETURN s.id AS s ORDER BY s", w=winner
    )
    assert [r["s"] for r in links] == sorted([s1, s2])
    assert cypher(sink, "MATCH (o:Opportunity {id: $l}) RETURN o", l=loser) == []
    assert verify(db_dsn, sink).clean


def test_entity_merge_moves_mentions_to_the_winner(
    changes: Changes, worker_factory: Any, sink: Neo4jSink, db_dsn: str
) -> None:
    winner, loser = changes.entity("Acme"), changes.entity("ACME (dup)")
    s1 = changes.signal("n-1", entities=[loser])
    s2 = changes.signal("n-2", entities=[winner, loser])
    worker = worker_factory()
    worker.run(once=True)
    changes.merge_entities(winner, [loser])
    with psycopg.connect(db_dsn, autocommit=True) as c:  # deliver only the loser's event
        c.execute("DELETE FROM sigledger.outbox WHERE aggregate_id <> %s", (loser,))
    worker.run(once=True)  # its relationships move to the winner in Neo4j
    assert cypher(sink, "MATCH (e:Entity) RETURN e.id AS id") == [{"id": winner}]
    mentions = cypher(sink, "MATCH (s:Signal)-[:MENTIONS]->(e:Entity) RETURN s.id AS s, e.id AS e ORDER BY s")
    assert mentions == sorted([{"s": s1, "e": winner}, {"s": s2, "e": winner}], key=lambda r: r["s"])
    assert verify(db_dsn, sink).clean


def test_duplicates_and_replays_change_nothing(
    changes: Changes, worker_factory: Any, sink: Neo4jSink, db_dsn: str
) -> None:
    e = changes.entity("Acme")
    s = changes.signal("n-1", entities=[e])
    changes.opportunity("Deal", signals=[s])
    worker = worker_factory()
    worker.run(once=True)
    before = graph_state(sink)

    changes.replay_all()
    changes.replay_all()  # each aggregate now has two pending duplicates
    assert status(db_dsn)["pending"] == 6
    total = worker.run(once=True)

    assert total.acked == 6
    assert graph_state(sink) == before
    assert verify(db_dsn, sink).clean


def test_older_snapshot_is_refused(changes: Changes, worker_factory: Any, sink: Neo4jSink) -> None:
    opp = changes.opportunity("Current")
    worker_factory().run(once=True)
    [row] = cypher(sink, "MATCH (o:Opportunity {id: $id}) RETURN o.sync_version AS v", id=opp)
    current = row["v"]
    stale = Snapshot("opportunity", opp, "present", current - 1, {"id": opp, "title": "Stale"}, ())
    sink.write([stale])
    assert cypher(sink, "MATCH (o:Opportunity {id: $id}) RETURN o.title AS t", id=opp) == [{"t": "Current"}]
    old_delete = Snapshot("opportunity", opp, "absent", current - 1)
    sink.write([old_delete])
    assert cypher(sink, "MATCH (o:Opportunity {id: $id}) RETURN count(o) AS n", id=opp) == [{"n": 1}]
    newer = Snapshot("opportunity", opp, "present", current + 1, {"id": opp, "title": "Newer"}, ())
    sink.write([newer])
    assert cypher(sink, "MATCH (o:Opportunity {id: $id}) RETURN o.title AS t", id=opp) == [{"t": "Newer"}]


def test_poison_row_goes_dead_without_stopping_others_and_retry_brings_it_back(
    changes: Changes, worker_factory: Any, sink: Neo4jSink, db_dsn: str
) -> None:
    # Someone added a Neo4j constraint our data violates: two entities of type "twin".
    cypher(sink, "CREATE CONSTRAINT poison_entity_type FOR (e:Entity) REQUIRE e.entity_type IS UNIQUE")
    good = [changes.entity(f"Good {i}", entity_type=f"good-{i}") for i in range(6)]
    twins = [changes.entity("Twin A", entity_type="twin"), changes.entity("Twin B", entity_type="twin")]
    more = [changes.entity(f"More {i}", entity_type=f"more-{i}") for i in range(3)]
    worker = worker_factory(batch_size=50, max_attempts=3, base_delay=0.0)

    total = worker.run(once=True)

    st = status(db_dsn)
    assert st["dead"] == 1 and st["pending"] == 0
    assert total.dead == 1 and total.failed == 3  # three attempts, the last one dead
    names = {r["n"] for r in cypher(sink, "MATCH (e:Entity) RETURN e.name AS n")}
    assert names >= {f"Good {i}" for i in range(6)} | {f"More {i}" for i in range(3)}
    assert len(names & {"Twin A", "Twin B"}) == 1
    with psycopg.connect(db_dsn) as c:
        [dead] = c.execute(
            "SELECT aggregate_id::text, attempts, last_error FROM sigledger._graph_dead_list()"
        ).fetchall()
    assert dead[0] in twins and dead[1] == 3 and "ConstraintValidationFailed" in dead[2]
    assert not verify(db_dsn, sink).clean  # the dead twin is missing

    # A dead row is not claimed again by itself.
    assert worker.run(once=True).claimed == 0

    # The fix, then the operator's retry.
    cypher(sink, "DROP CONSTRAINT poison_entity_type")
    with psycopg.connect(db_dsn) as c:
        assert c.execute("SELECT sigledger._graph_dead_retry()").fetchone() == (1,)
    assert worker.run(once=True).acked == 1
    assert status(db_dsn)["dead"] == 0
    assert len(good) + len(more) + len(twins) == cypher(sink, "MATCH (e:Entity) RETURN count(e) AS n")[0]["n"]
    assert verify(db_dsn, sink).clean


def test_backoff_reschedules_a_failing_row_into_the_future(
    changes: Changes, worker_factory: Any, sink: Neo4jSink, db_dsn: str
) -> None:
    cypher(sink, "CREATE CONSTRAINT poison_entity_type FOR (e:Entity) REQUIRE e.entity_type IS UNIQUE")
    changes.entity("Twin A", entity_type="twin")
    changes.entity("Twin B", entity_type="twin")
    worker = worker_factory(max_attempts=5, base_delay=3600.0, max_delay=7200.0)
    total = worker.run(once=True)
    assert total.failed == 1 and total.dead == 0
    with psycopg.connect(db_dsn) as c:
        row = c.execute(
            "SELECT attempts, next_attempt_at > clock_timestamp() + interval '20 minutes', "
            "last_error IS NOT NULL FROM sigledger.outbox"
        ).fetchone()
    assert row == (1, True, True)  # 3600 s * [0.5, 1): not due again for at least half an hour
    st = status(db_dsn)
    assert st["pending"] == 1 and st["due"] == 0 and st["retrying"] == 1


def test_bad_credentials_and_unreachable_server_fail_clearly(
    neo4j_settings: Neo4jSettings, db_dsn: str
) -> None:
    bad = Neo4jSettings(uri=neo4j_settings.uri, user=neo4j_settings.user, password="wrong-password")
    with pytest.raises(GraphAuthError, match="rejected the credentials of user 'neo4j'"):
        connect(bad)
    from sigledger.core.localdb import free_port

    nowhere = Neo4jSettings(
        uri=f"bolt://127.0.0.1:{free_port()}", user="neo4j", password="x", connection_timeout=2.0
    )
    with pytest.raises(GraphUnavailable, match="unreachable"):
        make_worker(db_dsn, nowhere, WorkerConfig())
