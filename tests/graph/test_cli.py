"""The `sigledger graph` command line, run as a real subprocess against the real Neo4j."""

from __future__ import annotations

import json

import psycopg
from sigledger.graph.neo4j_server import Neo4jServer
from sigledger.graph.sink import Neo4jSink

from .conftest import Changes, cli, cypher, status


def test_init_sync_status_verify(
    neo4j_server: Neo4jServer, sink: Neo4jSink, changes: Changes, db_dsn: str
) -> None:
    cypher(sink, "DROP CONSTRAINT sigledger_signal_id IF EXISTS")
    init = cli("graph", "init", dsn=db_dsn)
    assert init.returncode == 0, init.stderr
    names = {r["name"] for r in cypher(sink, "SHOW CONSTRAINTS YIELD name RETURN name")}
    assert {"sigledger_entity_id", "sigledger_signal_id", "sigledger_opportunity_id"} <= names

    e = changes.entity("Acme")
    changes.signal("n-1", entities=[e])
    st = cli("graph", "status", "--json", dsn=db_dsn)
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["pending"] == 2

    drift = cli("graph", "verify", dsn=db_dsn)
    assert drift.returncode == 3  # the two changes are not in Neo4j yet
    assert "2 missing" in drift.stdout

    run = cli("graph", "sync", "--once", "--workers", "2", dsn=db_dsn)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(cli("graph", "status", "--json", dsn=db_dsn).stdout)["pending"] == 0
    ok = cli("graph", "verify", "--json", dsn=db_dsn)
    assert ok.returncode == 0 and json.loads(ok.stdout)["clean"] is True


def test_verify_reports_stale_and_extra_then_rebuild_repairs(
    sink: Neo4jSink, changes: Changes, db_dsn: str
) -> None:
    e = changes.entity("Acme")
    s = changes.signal("n-1", entities=[e])
    assert cli("graph", "sync", "--once", dsn=db_dsn).returncode == 0
    # Drift behind the projection's back: a property edited in Neo4j, a node Postgres never had, and a
    # change in Postgres whose outbox row was lost (what the seed's try/catch sync did silently).
    cypher(sink, "MATCH (e:Entity {id: $id}) SET e.name = 'Edited in Neo4j'", id=e)
    cypher(sink, "CREATE (:Signal {id: '7f1b7e1c-0000-4000-8000-000000000001', source: 'ghost'})")
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("UPDATE sigledger.signals SET content = 'changed without an event' WHERE id = %s", (s,))

    drift = cli("graph", "verify", "--json", dsn=db_dsn)
    assert drift.returncode == 3
    report = json.loads(drift.stdout)
    assert report["stale"]["entity"] == [e] and report["stale"]["signal"] == [s]
    assert report["extra"]["signal"] == ["7f1b7e1c-0000-4000-8000-000000000001"]

    dry = cli("graph", "rebuild", "--dry-run", dsn=db_dsn)
    assert dry.returncode == 0 and "dry run" in dry.stdout
    assert status(db_dsn)["pending"] == 0  # nothing enqueued

    fixed = cli("graph", "rebuild", dsn=db_dsn)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert cli("graph", "verify", dsn=db_dsn).returncode == 0
    assert cypher(sink, "MATCH (e:Entity {id: $id}) RETURN e.name AS n", id=e) == [{"n": "Acme"}]


def test_dead_list_retry_purge(sink: Neo4jSink, changes: Changes, db_dsn: str) -> None:
    cypher(sink, "CREATE CONSTRAINT poison_entity_type FOR (e:Entity) REQUIRE e.entity_type IS UNIQUE")
    changes.entity("Twin A", entity_type="twin")
    changes.entity("Twin B", entity_type="twin")
    run = cli("graph", "sync", "--once", "--max-attempts", "1", dsn=db_dsn)
    assert run.returncode == 0, run.stderr
    listed = cli("graph", "dead", "list", "--json", dsn=db_dsn)
    [row] = json.loads(listed.stdout)
    assert "ConstraintValidationFailed" in row["last_error"]
    assert cli("graph", "dead", "retry", dsn=db_dsn).returncode == 2  # ids or --all required

    retried = cli("graph", "dead", "retry", str(row["id"]), dsn=db_dsn)
    assert retried.returncode == 0 and "1 dead rows are due again" in retried.stdout
    assert cli("graph", "sync", "--once", "--max-attempts", "1", dsn=db_dsn).returncode == 0
    assert status(db_dsn)["dead"] == 1  # not fixed yet: dead again
    purged = cli("graph", "dead", "purge", "--all", "--yes", dsn=db_dsn)
    assert purged.returncode == 0 and "1 dead rows deleted" in purged.stdout
    assert status(db_dsn)["dead"] == 0


def test_sync_with_bad_password_fails_with_a_clear_message(sink: Neo4jSink, db_dsn: str) -> None:
    run = cli("graph", "sync", "--once", "--neo4j-password", "wrong", dsn=db_dsn)
    assert run.returncode == 1
    assert "rejected the credentials" in run.stderr and "Traceback" not in run.stderr
