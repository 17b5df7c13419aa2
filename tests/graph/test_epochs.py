"""Epochs (docs/graph.md): a graph records which database and epoch wrote it. After PostgreSQL is restored
from a backup, against a graph of another database, or against a wiped graph, sync refuses with a clear error
and writes nothing; `graph rebuild` makes the graph this database's again, and then it is exact."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pytest_postgresql.executors import PostgreSQLExecutor
from sigledger.graph.sink import Neo4jSink

from ..conftest import clone_database, drop_database, make_dsn
from .conftest import Changes, cli, cypher, status


@pytest.fixture
def other_db(pg: PostgreSQLExecutor, template_db: str) -> Iterator[str]:
    """A second database (another clone of the template: its own identity, drawn at its first sync)."""
    name = clone_database(pg, template_db, prefix="other")
    yield make_dsn(pg, name)
    drop_database(pg, name)


def _sync(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("graph", "sync", "--once", *args, dsn=dsn)


def _verify(dsn: str) -> dict[str, object]:
    run = cli("graph", "verify", "--json", dsn=dsn)
    assert run.returncode in (0, 3), run.stdout + run.stderr
    report: dict[str, object] = json.loads(run.stdout)
    return report


def test_restored_database_is_refused_then_rebuild_converges(
    pg: PostgreSQLExecutor, sink: Neo4jSink, changes: Changes, db_dsn: str, tmp_path: Path
) -> None:
    acme = changes.entity("Acme")
    changes.signal("n-1", entities=[acme])
    assert _sync(db_dsn).returncode == 0
    dump = tmp_path / "backup.dump"
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump), db_dsn], check=True, capture_output=True)

    # After the backup: more changes, projected (the graph now holds versions the backup never handed out).
    lost = changes.entity("Lost with the restore")
    for i in range(2):
        changes.conn.execute("SELECT sigledger.add_alias(%s::uuid, %s)", (acme, f"Acme alias {i}"))
        assert _sync(db_dsn, "--batch-size", "1").returncode == 0

    # The restore: a database from the backup; then a change of an aggregate the graph already shows.
    restored = clone_database(pg, "template0", prefix="restored")
    try:
        restored_dsn = make_dsn(pg, restored)
        subprocess.run(["pg_restore", "-d", restored_dsn, str(dump)], check=True, capture_output=True)
        with psycopg.connect(restored_dsn, autocommit=True) as c:
            c.execute("SELECT sigledger.add_alias(%s::uuid, 'ACME after the restore')", (acme,))

        refused = _sync(restored_dsn)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "ahead of this database" in refused.stderr and "graph rebuild" in refused.stderr
        assert status(restored_dsn)["pending"] == 1  # nothing acknowledged
        again = _sync(restored_dsn)  # every worker refuses from now on, not only the one that found it
        assert again.returncode == 1 and "restored from a backup" in again.stderr

        rebuilt = cli("graph", "rebuild", dsn=restored_dsn)
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        report = _verify(restored_dsn)
        assert report["clean"] is True, report
        aliases = cypher(sink, "MATCH (e:Entity {id: $id}) RETURN e.aliases AS a", id=acme)[0]["a"]
        assert "ACME after the restore" in aliases and "Acme alias 0" not in aliases
        assert cypher(sink, "MATCH (e:Entity {id: $id}) RETURN count(e) AS n", id=lost) == [{"n": 0}]
        # Sync works again, in the new epoch.
        with psycopg.connect(restored_dsn, autocommit=True) as c:
            c.execute("SELECT sigledger.create_entity('After the rebuild')")
        assert _sync(restored_dsn).returncode == 0
        assert _verify(restored_dsn)["clean"] is True
    finally:
        drop_database(pg, restored)


def test_graph_of_another_database_is_refused_then_rebuild_replaces_it(
    sink: Neo4jSink, changes: Changes, db_dsn: str, other_db: str
) -> None:
    # This database projects first, one version per batch: its versions run well above the other's.
    for i in range(8):
        changes.entity(f"First {i}")
    assert _sync(db_dsn, "--batch-size", "1").returncode == 0

    other = Changes(other_db)
    try:
        mine = other.entity("Other's own")
        refused = _sync(other_db)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "another database" in refused.stderr
        assert cypher(sink, "MATCH (e:Entity {id: $id}) RETURN count(e) AS n", id=mine) == [{"n": 0}]

        rebuilt = cli("graph", "rebuild", dsn=other_db)
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        assert _verify(other_db)["clean"] is True
        assert cypher(sink, "MATCH (e:Entity) RETURN e.id AS id") == [{"id": mine}]
    finally:
        other.close()
    # And now the first database is the one refused.
    changes.entity("Too late")
    assert "another database" in _sync(db_dsn).stderr


def test_wiped_graph_is_refused_then_rebuild_restores_it(
    sink: Neo4jSink, changes: Changes, db_dsn: str
) -> None:
    acme = changes.entity("Acme")
    changes.opportunity("Deal", signals=[changes.signal("n-1", entities=[acme])])
    assert _sync(db_dsn).returncode == 0
    sink.wipe()
    changes.entity("After the wipe")

    refused = _sync(db_dsn)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "wiped or replaced" in refused.stderr
    assert status(db_dsn)["pending"] == 1

    assert cli("graph", "rebuild", dsn=db_dsn).returncode == 0
    report = _verify(db_dsn)
    assert report["clean"] is True, report
    assert report["checked"] == {"entity": 2, "signal": 1, "opportunity": 1}
