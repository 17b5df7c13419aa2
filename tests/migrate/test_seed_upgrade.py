"""A seed-era database (tests/migrate/seed_era.py) upgraded to head: every migration succeeds on data the
V3_010 schema accepted, the preflight reports that data before anything runs, and every row is accounted for
(repaired in place, or moved to sigledger_meta.quarantine with its reason; none dropped).

Three ways in: the runner as superuser on the shared cluster; and, on a cluster of their own, a non-superuser
deployer with CREATEROLE who built V3_010 with the runner, and a deployer without CREATEROLE (roles made by a
DBA from `sigledger roles sql`) adopting a V3_010 that was loaded with psql (`baseline`, then `up`)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from sigledger.migrate import Migrator

from tests.migrate import seed_era
from tests.migrate.clusters import Cluster, fresh_cluster
from tests.migrate.helpers import cli_process


def _ok(result: object) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"  # type: ignore[attr-defined]


def assert_accounted(dsn: str, dirt: seed_era.Dirt) -> None:
    """Every seed row is where the rules say: repaired in place or quarantined with a reason."""
    with psycopg.connect(dsn, autocommit=True) as conn:

        def one(sql: str) -> object:
            row = conn.execute(sql).fetchone()
            assert row is not None
            return row[0]

        def quarantined(table: str) -> int:
            return int(one(f"SELECT count(*) FROM sigledger_meta.quarantine WHERE source_table = '{table}'"))  # type: ignore[call-overload]

        assert one("SELECT count(*) FROM sigledger.entity_aliases") == 5
        assert quarantined("sigledger.entity_aliases") == dirt.aliases - 5
        assert one("SELECT count(*) FROM sigledger.llm_cost_log") == dirt.ledger - 3
        assert quarantined("sigledger.llm_cost_log") == 3
        assert one("SELECT count(*) FROM sigledger.signal_entities") == 3
        assert quarantined("sigledger.signal_entities") == dirt.links - 3
        assert one("SELECT count(*) FROM sigledger.entities") == dirt.entities
        # the rules' results
        assert one("SELECT count(*) FROM sigledger.entity_aliases WHERE alias <> btrim(alias)") == 0
        assert (
            one(
                "SELECT count(*) FROM sigledger.entity_aliases a JOIN sigledger.entities e "
                "ON e.id = a.canonical_entity_id WHERE e.merged_into IS NOT NULL"
            )
            == 0
        )
        assert (
            one(
                "SELECT count(*) FROM sigledger.entities WHERE merged_into IS NOT NULL "
                "AND merged_at IS DISTINCT FROM updated_at"
            )
            == 0
        )
        for name, entity in (("ACME", seed_era.A), ("acme old", seed_era.A), (" globex", seed_era.C)):
            assert one(f"SELECT sigledger.resolve_entity('{name}')::text") == entity, name
        reasons = [
            r[0] for r in conn.execute("SELECT reason FROM sigledger_meta.quarantine ORDER BY id").fetchall()
        ]
        assert all(reasons), reasons
        assert any("llm_cost_log_tokens_range" in r for r in reasons), reasons
        assert any("equal once trimmed and lower-cased to alias 'Acme'" in r for r in reasons), reasons
        actions = conn.execute(
            "SELECT DISTINCT repair FROM sigledger_meta.repair_history ORDER BY 1"
        ).fetchall()
        assert [a[0] for a in actions] == [
            "R001__ledger_out_of_range.sql",
            "R002__aliases.sql",
            "R003__entity_tombstones.sql",
        ]


def test_seed_era_database_upgrades_to_head_and_every_row_is_accounted_for(empty_db_dsn: str) -> None:
    seed_era.build_with_runner(empty_db_dsn)
    dirt = seed_era.fill(empty_db_dsn)
    Migrator(empty_db_dsn).up()
    assert Migrator(empty_db_dsn).status().exit_code == 0
    assert Migrator(empty_db_dsn).verify() == []
    assert_accounted(empty_db_dsn, dirt)


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    with fresh_cluster(tmp_path) as c:
        yield c


def test_createrole_deployer_upgrades_a_seed_era_database(cluster: Cluster) -> None:
    cluster.sql(
        "CREATE ROLE deployer LOGIN CREATEROLE",
        "CREATE DATABASE app",
        "GRANT CREATE ON DATABASE app TO deployer",
    )
    _ok(cluster.sigledger("migrate", "up", "--to", "V3_010"))
    dirt = seed_era.fill(cluster.dsn("app"))  # the old application wrote it

    # the preflight names the data the upgrade would refuse, with counts, examples and the rule; nothing blocks
    pre = cluster.sigledger("migrate", "preflight", "--json")
    _ok(pre)
    findings = {
        c["message"].split(":")[0]: c for c in json.loads(pre.stdout)["checks"] if c["status"] == "data"
    }
    assert (
        findings["aliases with leading or trailing spaces (V5_001 entity_aliases_alias_trimmed)"]["rows"] == 2
    )
    assert (
        findings["tombstoned entities without merged_at (V5_001 entities_tombstone_consistent)"]["rows"] == 2
    )
    ledger = findings[
        "ledger rows with more than 1e12 tokens or created more than a day ahead (V4_001 refuses them)"
    ]
    assert ledger["rows"] == 3 and "seed-huge-1" in ledger["examples"][0]
    different = findings[
        "one name on different entities once trimmed and lower-cased (V5_002 entity_aliases_alias_lower_key)"
    ]
    assert different["rows"] == 4 and "merge those entities" in different["message"]

    up = cluster.sigledger("migrate", "up")
    _ok(up)
    assert "repair R002__aliases.sql before V5_002__ingest_indexes" in up.stdout, up.stdout
    _ok(cluster.sigledger("migrate", "verify"))
    assert_accounted(cluster.dsn("app"), dirt)
    history = cluster.sigledger("migrate", "history", "--json")
    _ok(history)
    repairs = [r for r in json.loads(history.stdout) if r["kind"] == "repair"]
    assert {r["name"] for r in repairs} == {
        "R001__ledger_out_of_range.sql",
        "R002__aliases.sql",
        "R003__entity_tombstones.sql",
    }
    assert "before V5_002__ingest_indexes: aliases equal once trimmed and lower-cased" in {
        r["file"] for r in repairs
    }


def test_deployer_without_createrole_adopts_a_psql_loaded_seed_era_database(cluster: Cluster) -> None:
    cluster.sql("CREATE ROLE deployer LOGIN", "CREATE DATABASE app")
    # the DBA: the roles from `sigledger roles sql`, then (long ago) the schema applied by hand with psql
    script = cli_process(["roles", "sql", "--deployer", "deployer", "--database", "app"])
    _ok(script)
    cluster.psql(script.stdout, dbname="app")
    seed_era.build_with_psql(cluster.dsn("app"))
    dirt = seed_era.fill(cluster.dsn("app"))

    # the tables belong to the psql login (postgres): the deployer cannot take them over, and is told the fix
    refused = cluster.sigledger("migrate", "baseline", "V3_010")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "ALTER TABLE sigledger.entities OWNER TO sigledger_owner;" in refused.stderr, refused.stderr
    assert cluster.query("SELECT to_regnamespace('sigledger_meta') IS NULL", dbname="app") == [(True,)]
    fixes = [line.strip().removeprefix("fix: ") for line in refused.stderr.splitlines() if "OWNER TO" in line]
    cluster.psql("\n".join(fixes), dbname="app")

    _ok(cluster.sigledger("migrate", "baseline", "V3_010"))
    up = cluster.sigledger("migrate", "up")
    _ok(up)
    verify = cluster.sigledger("migrate", "verify")
    _ok(verify)
    assert_accounted(cluster.dsn("app"), dirt)
