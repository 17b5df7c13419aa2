"""Released files rewritten since (V3_000, V4_001, V4_002, V4_004, V5_001, V7_001: online, no CREATEROLE or
TEMP needed) list the checksums of their first content (`-- sigledger:supersedes`). A database deployed by the
first release (its real code and files, taken from git) is therefore not drifted; this release upgrades it
(groups made NOLOGIN once the application has logins of its own), and the schema it ends with is exactly the
one a fresh deployment of this release builds."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import psycopg
import pytest

from tests.migrate.clusters import Cluster, fresh_cluster
from tests.migrate.dumps import schema_dump
from tests.migrate.helpers import ROOT

FIRST_RELEASE = "53e7851f087b20dce8fcfb24c854cff1f17c258f"  # main when V3_000 .. V7_001 were released
REWRITTEN = [
    "V3_000__baseline",
    "V4_001__cost_ledger",
    "V4_002__budgets",
    "V4_004__ledger_partitions",
    "V5_001__ingest_schema",
    "V7_001__operator_roles",
]


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def _first_release(tmp_path: Path) -> Path:
    archive = tmp_path / "first.tar"
    subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "archive",
            "-o",
            str(archive),
            FIRST_RELEASE,
            "pyproject.toml",
            "harness",
            "sql",
        ],
        check=True,
    )
    target = tmp_path / "first"
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


def _run(release: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sigledger", *args],
        capture_output=True,
        text=True,
        cwd=release,
        env={**os.environ, "PYTHONPATH": str(release / "harness")},
        timeout=600,
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    with fresh_cluster(tmp_path) as c:
        yield c


def test_a_database_of_the_first_release_is_not_drifted_and_upgrades_to_the_same_schema(
    cluster: Cluster, tmp_path: Path
) -> None:
    first = _first_release(tmp_path)
    cluster.sql("CREATE DATABASE old", "CREATE DATABASE fresh")
    old = cluster.dsn("old")
    _ok(_run(first, "migrate", "up", "--dsn", old))
    with psycopg.connect(old, autocommit=True) as conn:  # some life under the first release
        agent = conn.execute("SELECT sigledger.create_agent('first-release', 10)").fetchone()[0]  # type: ignore[index]
        reservation = conn.execute(
            "SELECT reservation_id FROM sigledger.reserve_budget(%s, 1)", (agent,)
        ).fetchone()
        conn.execute("SELECT sigledger.settle_budget(%s, 0.5)", (reservation[0],))  # type: ignore[index]
        a = conn.execute("SELECT sigledger.create_entity('Acme')").fetchone()[0]  # type: ignore[index]
        b = conn.execute("SELECT sigledger.create_entity('Acme Inc')").fetchone()[0]  # type: ignore[index]
        conn.execute("SELECT sigledger.merge_entities(%s, ARRAY[%s]::uuid[])", (a, b))
    # the first release made the groups LOGIN roles with settings; its application logs in as sigledger_app
    assert cluster.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'sigledger_app'") == [(True,)]

    status = cluster.sigledger("migrate", "status", "--json", dbname="old", user="postgres")
    assert status.returncode == 3, status.stdout + status.stderr  # repeatables changed, nothing drifted
    body = __import__("json").loads(status.stdout)
    assert body["drifted"] == [] and body["superseded"] == REWRITTEN

    # the upgrade says what to create first, and changes nothing until then
    refused = cluster.sigledger("migrate", "up", dbname="old", user="postgres")
    assert refused.returncode == 1 and "sigledger role create-login <name> --as app" in refused.stderr, (
        refused.stderr
    )
    for name, group in (("web", "app"), ("dash", "readonly"), ("ops", "admin"), ("sync", "graph")):
        _ok(cluster.sigledger("role", "create-login", name, "--as", group, dbname="old", user="postgres"))
    _ok(cluster.sigledger("migrate", "up", dbname="old", user="postgres"))
    _ok(cluster.sigledger("migrate", "verify", dbname="old", user="postgres"))
    assert cluster.query(
        "SELECT count(*) FROM pg_roles r WHERE r.rolname LIKE 'sigledger%' AND (r.rolcanlogin "
        "OR EXISTS (SELECT FROM pg_db_role_setting s WHERE s.setrole = r.oid))"
    ) == [(0,)]
    with psycopg.connect(cluster.dsn("old", "web"), autocommit=True) as app:
        assert app.execute("SHOW statement_timeout").fetchone() == ("30s",)
        app.execute("SELECT sigledger.record_cost('after-upgrade', %s, 'm', 'p', 1, 1, 0.1)", (agent,))

    _ok(cluster.sigledger("migrate", "up", dbname="fresh", user="postgres"))
    # (the ledger's partitions are those of the day each database ran V4_004: compared without the clock)
    assert schema_dump(old) == schema_dump(cluster.dsn("fresh"))
