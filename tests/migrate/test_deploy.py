"""Deploying as a DBA on a managed service would: no superuser, real non-superuser logins, on a cluster where
the sigledger roles do not exist yet.

(a) a deployer with CREATEROLE creates the roles and grants itself what it needs;
(b) a DBA creates the roles from `sigledger roles sql`, after which the deployer needs no CREATEROLE;
then any member of sigledger_owner runs every runner command, applications log in as member logins that carry
the server-side timeouts, and the preflight names each missing privilege before anything runs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.migrate.clusters import Cluster, fresh_cluster
from tests.migrate.helpers import cli_process


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    with fresh_cluster(tmp_path) as c:
        yield c


def _ok(result: object) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"  # type: ignore[attr-defined]


def _managed_database(cluster: Cluster, deployer: str, createrole: bool) -> None:
    """A managed service's database: the deployer may connect and create schemas, TEMP is revoked from
    PUBLIC (some services do), nobody but the service is superuser."""
    cluster.sql(
        f"CREATE ROLE {deployer} LOGIN {'CREATEROLE' if createrole else ''}",
        "CREATE DATABASE app",
        f"GRANT CONNECT, CREATE ON DATABASE app TO {deployer}",
        "REVOKE TEMPORARY ON DATABASE app FROM PUBLIC",
    )


def _api_works_as(cluster: Cluster, login: str) -> None:
    with psycopg.connect(cluster.dsn("app", login), autocommit=True) as conn:
        settings = dict(
            conn.execute("SELECT name, setting FROM pg_settings WHERE source = 'user'").fetchall()
        )
        assert settings["statement_timeout"] == "30000", settings
        assert settings["idle_in_transaction_session_timeout"] == "60000", settings
        conn.execute("SELECT * FROM sigledger.cost_trends(p_days => 7)").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM sigledger.llm_cost_log")


def test_deployer_with_createrole_deploys_and_any_owner_member_runs_every_command(cluster: Cluster) -> None:
    _managed_database(cluster, "deployer", createrole=True)
    _ok(cluster.sigledger("migrate", "up"))
    _ok(cluster.sigledger("migrate", "status"))
    verify = cluster.sigledger("migrate", "verify")
    _ok(verify)
    assert cluster.query(
        "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'sigledger%' ORDER BY 1"
    ) == [
        (r, False)
        for r in (
            "sigledger_admin",
            "sigledger_app",
            "sigledger_graph",
            "sigledger_owner",
            "sigledger_readonly",
        )
    ]

    # the application's login, made by the deployer (it has CREATEROLE)
    _ok(cluster.sigledger("role", "create-login", "web", "--as", "app"))
    _api_works_as(cluster, "web")

    # a second deploy login, member of sigledger_owner and nothing else
    cluster.sql("CREATE ROLE deployer2 LOGIN", "GRANT sigledger_owner TO deployer2")
    for command in (["status"], ["preflight"], ["plan"], ["up"], ["verify"], ["history"]):
        _ok(cluster.sigledger("migrate", *command, user="deployer2"))
    _ok(cluster.sigledger("migrate", "down", "--to", "V6_001", user="deployer2"))
    _ok(cluster.sigledger("migrate", "up", user="deployer2"))
    _ok(cluster.sigledger("migrate", "verify", user="deployer2"))


def test_roles_made_by_a_dba_need_no_createrole_and_the_preflight_names_what_is_missing(
    cluster: Cluster,
) -> None:
    cluster.sql(
        "CREATE ROLE deployer LOGIN", "CREATE DATABASE app", "REVOKE TEMPORARY ON DATABASE app FROM PUBLIC"
    )

    # nothing in place: every missing piece named, nothing changed
    pre = cluster.sigledger("migrate", "preflight", "--json")
    assert pre.returncode == 5, pre.stdout + pre.stderr
    blocked = [c for c in json.loads(pre.stdout)["checks"] if c["status"] == "BLOCKED"]
    text = json.dumps(blocked)
    assert "CREATE ROLE sigledger_owner NOLOGIN" in text and "no CREATEROLE" in text
    assert 'GRANT CREATE ON DATABASE \\"app\\" TO \\"deployer\\"' in text
    up = cluster.sigledger("migrate", "up")
    assert up.returncode == 1 and "nothing was changed" in up.stderr, up.stderr
    assert cluster.query("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'sigledger%'") == [(0,)]
    assert cluster.query(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sigledger%'", dbname="app"
    ) == [(0,)]

    # the DBA runs the printed SQL once (twice: it is idempotent), then the deployer needs nothing more
    script = cli_process(["roles", "sql", "--deployer", "deployer", "--database", "app"])
    _ok(script)
    cluster.psql(script.stdout, dbname="app")
    cluster.psql(script.stdout, dbname="app")
    pre = cluster.sigledger("migrate", "preflight")
    _ok(pre)
    assert "[will do] roles" not in pre.stdout, pre.stdout
    _ok(cluster.sigledger("migrate", "up"))
    _ok(cluster.sigledger("migrate", "verify"))

    # the DBA makes the application's login from the printed SQL
    login = cli_process(["role", "create-login", "web", "--as", "app", "--print-sql"])
    _ok(login)
    cluster.psql(login.stdout)
    _api_works_as(cluster, "web")


def test_second_deployer_takes_over_the_first_deployers_meta_schema(cluster: Cluster) -> None:
    """The issue's case: sigledger_meta created by a first deployer (as an earlier release did) blocks a second
    member of sigledger_owner; now the runner hands it to sigledger_owner, or names the fix."""
    _managed_database(cluster, "deployer", createrole=True)
    _ok(cluster.sigledger("migrate", "up"))
    # what an earlier release left: the runner's schema and tables owned by the login that ran it
    cluster.sql(
        "ALTER SCHEMA sigledger_meta OWNER TO deployer",
        "ALTER TABLE sigledger_meta.schema_history OWNER TO deployer",
        "ALTER TABLE sigledger_meta.repeatable_history OWNER TO deployer",
        dbname="app",
    )
    cluster.sql("CREATE ROLE deployer2 LOGIN", "GRANT sigledger_owner TO deployer2")
    status = cluster.sigledger("migrate", "status", user="deployer2")
    assert status.returncode == 1, status.stdout + status.stderr
    assert "ALTER SCHEMA sigledger_meta OWNER TO sigledger_owner;" in status.stderr, status.stderr
    assert "run `sigledger migrate up` once as deployer" in status.stderr, status.stderr
    pre = cluster.sigledger("migrate", "preflight", user="deployer2")
    assert (
        pre.returncode == 5
        and "ALTER TABLE sigledger_meta.schema_history OWNER TO sigledger_owner" in pre.stdout
    ), pre.stdout
    # the first deployer (who owns them) runs anything: they are handed over
    _ok(cluster.sigledger("migrate", "up"))
    for command in (["up"], ["verify"], ["history"]):
        _ok(cluster.sigledger("migrate", *command, user="deployer2"))


def test_dump_and_restore_by_the_deployer_into_another_database(cluster: Cluster, tmp_path: Path) -> None:
    """pg_dump of the two schemas and pg_restore into a new database, both by the non-superuser deployer (a
    member of sigledger_owner): owners, privileges and history come along; status, verify and the API work."""
    _managed_database(cluster, "deployer", createrole=True)
    _ok(cluster.sigledger("migrate", "up"))
    _ok(cluster.sigledger("role", "create-login", "web", "--as", "app"))
    _ok(cluster.sigledger("role", "create-login", "ops", "--as", "admin"))
    with psycopg.connect(cluster.dsn("app", "ops"), autocommit=True) as ops:
        agent = ops.execute("SELECT sigledger.create_agent('dumped', 10)").fetchone()[0]  # type: ignore[index]
        ops.execute("SELECT sigledger.record_cost('before-dump', %s, 'm', 'p', 1, 1, 0.5)", (agent,))
    archive = tmp_path / "app.dump"
    dump = subprocess.run(
        [
            "pg_dump",
            "-Fc",
            "-n",
            "sigledger",
            "-n",
            "sigledger_meta",
            "-f",
            str(archive),
            cluster.dsn("app", "deployer"),
        ],
        capture_output=True,
        text=True,
    )
    assert dump.returncode == 0, dump.stderr
    cluster.sql("CREATE DATABASE restored", "GRANT CONNECT, CREATE ON DATABASE restored TO deployer")
    restore = subprocess.run(
        ["pg_restore", "--exit-on-error", "-d", cluster.dsn("restored", "deployer"), str(archive)],
        capture_output=True,
        text=True,
    )
    assert restore.returncode == 0, restore.stderr
    _ok(cluster.sigledger("migrate", "status", dbname="restored"))
    _ok(cluster.sigledger("migrate", "verify", dbname="restored"))
    with psycopg.connect(cluster.dsn("restored", "web"), autocommit=True) as app:
        replay = app.execute("SELECT sigledger.record_cost('before-dump', %s, 'm', 'p', 1, 1, 0.5)", (agent,))
        assert replay.fetchone() is not None
        app.execute("SELECT sigledger.record_cost('after-restore', %s, 'm', 'p', 1, 1, 0.5)", (agent,))
