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
    """A cluster without the sigledger roles, for this test alone."""
    with fresh_cluster(tmp_path) as c:
        yield c


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """A cluster for the tests whose deployer has CREATEROLE (each in a database of its own): whether the roles
    already exist when a test starts makes no difference to them."""
    with fresh_cluster(tmp_path_factory.mktemp("deploy")) as c:
        yield c


def _ok(result: object) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"  # type: ignore[attr-defined]


def _managed_database(cluster: Cluster, deployer: str, createrole: bool, database: str = "app") -> None:
    """A managed service's database: the deployer may connect and create schemas, TEMP is revoked from
    PUBLIC (some services do), nobody but the service is superuser."""
    if not cluster.query(f"SELECT FROM pg_roles WHERE rolname = '{deployer}'"):
        cluster.sql(f"CREATE ROLE {deployer} LOGIN {'CREATEROLE' if createrole else ''}")
    cluster.sql(
        f"CREATE DATABASE {database}",
        f"GRANT CONNECT, CREATE ON DATABASE {database} TO {deployer}",
        f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC",
    )


def _api_works_as(cluster: Cluster, login: str, database: str = "app") -> None:
    with psycopg.connect(cluster.dsn(database, login), autocommit=True) as conn:
        settings = dict(
            conn.execute("SELECT name, setting FROM pg_settings WHERE source = 'user'").fetchall()
        )
        assert settings["statement_timeout"] == "30000", settings
        assert settings["idle_in_transaction_session_timeout"] == "60000", settings
        conn.execute("SELECT * FROM sigledger.cost_trends(p_days => 7)").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM sigledger.llm_cost_log")


def test_deployer_with_createrole_deploys_and_any_owner_member_runs_every_command(shared: Cluster) -> None:
    _managed_database(shared, "deployer", createrole=True, database="app1")
    _ok(shared.sigledger("migrate", "up", dbname="app1"))
    _ok(shared.sigledger("migrate", "status", dbname="app1"))
    verify = shared.sigledger("migrate", "verify", dbname="app1")
    _ok(verify)
    assert shared.query(
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
    _ok(shared.sigledger("role", "create-login", "web", "--as", "app", dbname="app1"))
    _api_works_as(shared, "web", "app1")

    # a second deploy login, member of sigledger_owner and nothing else
    shared.sql("CREATE ROLE deployer2 LOGIN", "GRANT sigledger_owner TO deployer2")
    for command in (["status"], ["preflight"], ["plan"], ["up"], ["verify"], ["history"]):
        _ok(shared.sigledger("migrate", *command, user="deployer2", dbname="app1"))
    _ok(shared.sigledger("migrate", "down", "--to", "V6_001", user="deployer2", dbname="app1"))
    _ok(shared.sigledger("migrate", "up", user="deployer2", dbname="app1"))
    _ok(shared.sigledger("migrate", "verify", user="deployer2", dbname="app1"))


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


def test_second_deployer_takes_over_the_first_deployers_meta_schema(shared: Cluster) -> None:
    """The issue's case: sigledger_meta created by a first deployer (as an earlier release did) blocks a second
    member of sigledger_owner; now the runner hands it to sigledger_owner, or names the fix."""
    _managed_database(shared, "deployer", createrole=True, database="app3")
    _ok(shared.sigledger("migrate", "up", dbname="app3"))
    # what an earlier release left: the runner's schema and tables owned by the login that ran it
    shared.sql(
        "ALTER SCHEMA sigledger_meta OWNER TO deployer",
        "ALTER TABLE sigledger_meta.schema_history OWNER TO deployer",
        "ALTER TABLE sigledger_meta.repeatable_history OWNER TO deployer",
        dbname="app3",
    )
    shared.sql("CREATE ROLE deployer3 LOGIN", "GRANT sigledger_owner TO deployer3")
    status = shared.sigledger("migrate", "status", user="deployer3", dbname="app3")
    assert status.returncode == 1, status.stdout + status.stderr
    assert "ALTER SCHEMA sigledger_meta OWNER TO sigledger_owner;" in status.stderr, status.stderr
    assert "run `sigledger migrate up` once as deployer" in status.stderr, status.stderr
    pre = shared.sigledger("migrate", "preflight", user="deployer3", dbname="app3")
    assert (
        pre.returncode == 5
        and "ALTER TABLE sigledger_meta.schema_history OWNER TO sigledger_owner" in pre.stdout
    ), pre.stdout
    # the first deployer (who owns them) runs anything: they are handed over
    _ok(shared.sigledger("migrate", "up", dbname="app3"))
    for command in (["up"], ["verify"], ["history"]):
        _ok(shared.sigledger("migrate", *command, user="deployer3", dbname="app3"))


def test_dump_and_restore_by_the_deployer_into_another_database(shared: Cluster, tmp_path: Path) -> None:
    """pg_dump of the two schemas and pg_restore into a new database, both by the non-superuser deployer (a
    member of sigledger_owner): owners, privileges and history come along; status, verify and the API work."""
    _managed_database(shared, "deployer", createrole=True, database="app4")
    _ok(shared.sigledger("migrate", "up", dbname="app4"))
    _ok(shared.sigledger("role", "create-login", "web4", "--as", "app", dbname="app4"))
    _ok(shared.sigledger("role", "create-login", "ops4", "--as", "admin", dbname="app4"))
    with psycopg.connect(shared.dsn("app4", "ops4"), autocommit=True) as ops:
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
            shared.dsn("app4", "deployer"),
        ],
        capture_output=True,
        text=True,
    )
    assert dump.returncode == 0, dump.stderr
    shared.sql("CREATE DATABASE restored4", "GRANT CONNECT, CREATE ON DATABASE restored4 TO deployer")
    restore = subprocess.run(
        ["pg_restore", "--exit-on-error", "-d", shared.dsn("restored4", "deployer"), str(archive)],
        capture_output=True,
        text=True,
    )
    assert restore.returncode == 0, restore.stderr
    _ok(shared.sigledger("migrate", "status", dbname="restored4"))
    _ok(shared.sigledger("migrate", "verify", dbname="restored4"))
    with psycopg.connect(shared.dsn("restored4", "web4"), autocommit=True) as app:
        replay = app.execute("SELECT sigledger.record_cost('before-dump', %s, 'm', 'p', 1, 1, 0.5)", (agent,))
        assert replay.fetchone() is not None
        app.execute("SELECT sigledger.record_cost('after-restore', %s, 'm', 'p', 1, 1, 0.5)", (agent,))
