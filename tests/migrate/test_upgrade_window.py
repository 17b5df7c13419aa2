"""The window of an upgrade between its versioned migrations and its repeatable files: the previous release's
functions keep working while this release's versioned migrations run, and when one of them fails (issue 10/13:
the first use of a budget period must not fail until a DBA intervenes). The budget_spend key swap (slices)
is therefore the last versioned step that can fail on data: every step before it leaves the previous release's
_spend_ensure able to infer its ON CONFLICT (budget_id, period_start) arbiter."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sigledger.core.errors import MigrationError
from sigledger.core.paths import migrations_dir
from sigledger.migrate import Migrator, Settings
from sigledger.migrate.files import discover_migrations

from tests.migrate.clusters import Cluster, fresh_cluster
from tests.migrate.helpers import history
from tests.migrate.test_superseded import _first_release, _ok, _run


class InjectedFailure(RuntimeError):
    pass


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    with fresh_cluster(tmp_path) as c:
        yield c


def _labels() -> list[str]:
    return [m.label for m in discover_migrations(migrations_dir())]


# The versioned steps allowed after the key swap: none can fail on any row the previous schema accepted (a
# failure would leave the window open until `migrate up` runs again), only on the runner's lock retries running
# out. V8_100 (issue 13: each budget table's CHECK rules in one constraint) creates functions, adds constraints
# NOT VALID, VALIDATEs them only where every rule they replace was validated, and drops the former ones. V8_101
# (the ledger's index on (created_at, id)) builds a non-unique index and drops one: no row can make it fail, only
# the runner's lock retries running out or a build cancelled (then it is resumed by running it again).
# V8_102 builds a non-unique partial index CONCURRENTLY (no row can fail it; an interrupted build leaves an
# INVALID index that the next run rebuilds). It scans budget_reservation, which lengthens the window of an
# upgrade that crosses the key swap in the same run (as V8_100's VALIDATEs do); a database already past the swap
# has no window. V8_103 (a refused row quarantined once) adds a nullable column with no default and a unique
# index on it, which every existing row leaves NULL. V8_104 replaces a function. V8_105 builds a non-unique
# partial index CONCURRENTLY on budget_reservation, as V8_102 does.
AFTER_THE_KEY_SWAP = (
    "__check_rules",
    "__ledger_created_at_id",
    "__reservation_agent_open_idx",
    "__quarantine_replay",
    "__ledger_sweep_nowait",
    "__reservation_agent_overrun_idx",
)


def test_the_budget_key_swap_is_the_last_versioned_step_that_can_fail_on_data() -> None:
    labels = _labels()
    swap = next(i for i, x in enumerate(labels) if x.endswith("__budget_slices"))
    assert all(x.endswith(AFTER_THE_KEY_SWAP) for x in labels[swap + 1 :]), labels[swap:]
    assert labels.index(next(x for x in labels if x.endswith("__ledger_exact_money"))) < swap


def test_an_upgrade_whose_money_step_fails_leaves_the_previous_release_working(
    cluster: Cluster, tmp_path: Path
) -> None:
    first = _first_release(tmp_path)
    cluster.sql("CREATE DATABASE old")
    old = cluster.dsn("old")
    _ok(_run(first, "migrate", "up", "--dsn", old))
    with psycopg.connect(old, autocommit=True) as conn:
        agent = conn.execute("SELECT sigledger.create_agent('window', 10)").fetchone()[0]  # type: ignore[index]

    def fail_money(where: str) -> None:  # the money step fails (a view the deployer may not drop, a crash...)
        if "__ledger_exact_money:" in where:
            raise InjectedFailure(where)

    migrator = Migrator(old, settings=Settings(retire_group_logins=True, before_step=fail_money))
    with pytest.raises((InjectedFailure, MigrationError)):
        migrator.up()
    # the previous release's functions, as its application calls them: the first use of a budget period
    with psycopg.connect(old, autocommit=True) as conn:
        reservation = conn.execute(
            "SELECT reservation_id FROM sigledger.reserve_budget(%s, 1)", (agent,)
        ).fetchone()
        assert reservation is not None
        conn.execute("SELECT sigledger.settle_budget(%s, 0.5)", (reservation[0],))
        assert conn.execute(
            "SELECT spent_usd FROM sigledger.budget_spend s JOIN sigledger.budget b ON b.id = s.budget_id"
            " WHERE b.agent_id = %s",
            (agent,),
        ).fetchone() == (0.5,)
    # and the upgrade, run again, completes
    Migrator(old, settings=Settings(retire_group_logins=True)).up()
    assert Migrator(old).verify() == []


def test_the_preflight_names_ledger_views_the_money_step_could_not_drop_and_recreate(
    cluster: Cluster,
) -> None:
    """A view on llm_cost_log.cost_usd owned by another role in a schema sigledger_owner may not use (the
    reviewer's `V8_081__ledger_exact_money:14: 42501: permission denied for schema reporting`): the preflight
    names it with the fix, `up` refuses before anything runs, and after the fix the upgrade completes and the
    view is still its owner's."""
    cluster.sql("CREATE DATABASE app")
    dsn = cluster.dsn("app")
    migrator = Migrator(dsn)
    migrator.up("8_061")
    cluster.sql(
        "CREATE ROLE analyst NOLOGIN",
        "CREATE SCHEMA reporting AUTHORIZATION analyst",
        "REVOKE ALL ON SCHEMA reporting FROM PUBLIC",
        "CREATE VIEW reporting.spend AS SELECT agent_id, sum(cost_usd) AS usd FROM sigledger.llm_cost_log"
        " GROUP BY agent_id",
        "ALTER VIEW reporting.spend OWNER TO analyst",
        dbname="app",
    )
    report = Migrator(dsn).preflight()
    found = [c for c in report.blocked if c.name == "ledger-views"]
    assert len(found) == 1, report.as_dict()["checks"][1:]
    assert "reporting.spend" in found[0].message and "no USAGE on schema reporting" in found[0].message
    assert "not a member of its owner analyst" in found[0].message
    assert (
        found[0].fix is not None
        and 'GRANT USAGE, CREATE ON SCHEMA "reporting" TO "sigledger_owner"' in found[0].fix
    )
    before = history(dsn)
    with pytest.raises(MigrationError, match=r"reporting\.spend"):
        Migrator(dsn).up()
    assert history(dsn) == before  # nothing ran

    # the fix as printed, then the upgrade
    cluster.sql(
        *[line for line in found[0].fix.split("upgrade: ", 1)[1].splitlines()[0].split(";") if line.strip()],
        dbname="app",
    )
    assert Migrator(dsn).preflight().blocked_by("ledger-views") == []
    Migrator(dsn).up()
    assert cluster.query(
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'reporting.spend'::regclass", dbname="app"
    ) == [("analyst",)]
