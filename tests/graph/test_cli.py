"""The `sigledger graph` command line, run as a real subprocess against the real Neo4j."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

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


def test_status_exits_3_past_the_lag_threshold_and_never_prints_a_dash(changes: Changes, db_dsn: str) -> None:
    idle = cli("graph", "status", dsn=db_dsn)
    assert idle.returncode == 0, idle.stdout + idle.stderr
    assert "oldest pending: none (nothing pending)" in idle.stdout and "- s" not in idle.stdout

    changes.entity("Waiting")
    with psycopg.connect(db_dsn, autocommit=True) as c:  # a row that has waited for two hours
        c.execute("UPDATE sigledger.outbox SET created_at = created_at - interval '2 hours'")
    late = cli("graph", "status", dsn=db_dsn)
    assert late.returncode == 3, late.stdout + late.stderr
    assert re.search(r"^oldest pending age: 7,2\d\d\.\d s$", late.stdout, re.M), late.stdout
    assert "NOT OK: oldest pending row is" in late.stdout
    report = json.loads(cli("graph", "status", "--json", dsn=db_dsn).stdout)
    assert report["ok"] is False and report["oldest_pending_age_s"] >= 7200 and report["max_lag_s"] == 60
    assert cli("graph", "status", "--max-lag", "86400", dsn=db_dsn).returncode == 0
    relaxed = subprocess.run(
        [sys.executable, "-m", "sigledger", "graph", "status"],
        capture_output=True,
        text=True,
        env=dict(os.environ, SIGLEDGER_DSN=db_dsn, SIGLEDGER_GRAPH_MAX_LAG="86400"),
        timeout=120,
    )
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert cli("graph", "status", "--max-lag", "-1", dsn=db_dsn).returncode == 2


def test_sync_once_shows_progress_on_a_terminal_and_one_summary_line_otherwise(
    sink: Neo4jSink, changes: Changes, db_dsn: str
) -> None:
    for i in range(30):
        changes.entity(f"E{i}")
    quiet = cli("graph", "sync", "--once", "--batch-size", "5", dsn=db_dsn)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # not a terminal: no progress, no bar
    [line] = quiet.stdout.splitlines()
    assert (
        line.startswith("projected 30 rows, 0 failed attempts, 0 now dead (30 rows in ") and "rows/s)" in line
    )

    for i in range(30):
        changes.entity(f"F{i}")
    main_fd, tty_fd = pty.openpty()  # stderr on a terminal: the progress line, redrawn with a rate
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sigledger", "graph", "sync", "--once", "--batch-size", "5"],
            stdout=subprocess.PIPE,
            stderr=tty_fd,
            env=dict(os.environ, SIGLEDGER_DSN=db_dsn),
        )
        os.close(tty_fd)
        shown = b""
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            shown += chunk
        out, _ = proc.communicate(timeout=120)
    finally:
        os.close(main_fd)
    assert proc.returncode == 0, shown
    text = shown.decode()
    assert "\r" in text and "projecting: " in text and " / 30 rows (" in text and "rows/s" in text
    assert out.decode().startswith("projected 30 rows")


def test_the_graph_and_admin_logins_sync_verify_and_rebuild(
    sink: Neo4jSink, changes: Changes, graph_dsn: str, admin_dsn: str
) -> None:
    """As deployed: the worker logs in as a member of sigledger_graph, the operator as one of sigledger_admin."""
    acme = changes.entity("Acme")
    changes.signal("n-1", entities=[acme])
    synced = cli("graph", "sync", "--once", dsn=graph_dsn)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    for dsn in (graph_dsn, admin_dsn):
        run = cli("graph", "verify", "--consistent", dsn=dsn)
        assert run.returncode == 0, run.stdout + run.stderr

    cypher(sink, "MATCH (e:Entity {id: $id}) SET e.name = 'Edited in Neo4j'", id=acme)
    rebuilt = cli("graph", "rebuild", dsn=admin_dsn)  # a new epoch and the refreshes; the workers project
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "the running sync workers will" in rebuilt.stdout
    assert cli("graph", "sync", "--once", dsn=graph_dsn).returncode == 0
    assert cli("graph", "verify", dsn=admin_dsn).returncode == 0
