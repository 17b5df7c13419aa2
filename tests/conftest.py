"""Shared fixtures: one real PostgreSQL cluster per test run, a template database migrated once, and a fresh
clone of it per test (CREATE DATABASE ... TEMPLATE copies files: much faster than migrating each time)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors import PostgreSQLExecutor
from sigledger.migrate import Migrator
from sigledger.migrate.roles import create_login

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "sigledger_template"
TEST_EXTENSIONS = ("pgtap", "plpgsql_check")
# Nobody logs in as a sigledger group (they are NOLOGIN): the tests connect as member logins made the way a
# deployment makes them (`sigledger role create-login NAME --as GROUP`), with the server-side timeouts on the
# login. Cluster-wide, created once with the template.
LOGINS = {
    "app": "sigledger_test_app",
    "readonly": "sigledger_test_readonly",
    "admin": "sigledger_test_admin",
    "graph": "sigledger_test_graph",
}

# pytest-postgresql starts the server through our root-aware pg_ctl wrapper (tests/bin/pg_ctl).
pg = factories.postgresql_proc(
    executable=str(ROOT / "tests" / "bin" / "pg_ctl"),
    port=None,
    postgres_options=(
        "-c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        "-c max_locks_per_transaction=256 -c log_min_messages=warning"
    ),
)


def make_dsn(proc: PostgreSQLExecutor, dbname: str, user: str | None = None) -> str:
    return f"host={proc.host} port={proc.port} dbname={dbname} user={user or proc.user}"


def admin_connect(proc: PostgreSQLExecutor) -> psycopg.Connection:
    return psycopg.connect(make_dsn(proc, "postgres"), autocommit=True)


@pytest.fixture(scope="session")
def template_db(pg: PostgreSQLExecutor) -> str:
    """The template database: every migration applied once, plus the test extensions."""
    with admin_connect(pg) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    dsn = make_dsn(pg, TEMPLATE)
    Migrator(dsn).up()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for ext in TEST_EXTENSIONS:
            conn.execute(f"CREATE EXTENSION IF NOT EXISTS {ext}")
        for group, login in LOGINS.items():
            create_login(conn, login, group)
    return TEMPLATE


_counter = itertools.count()


def clone_database(proc: PostgreSQLExecutor, template: str, prefix: str = "t") -> str:
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    with admin_connect(proc) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def drop_database(proc: PostgreSQLExecutor, name: str) -> None:
    with admin_connect(proc) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_name(pg: PostgreSQLExecutor, template_db: str) -> Iterator[str]:
    """A fresh database cloned from the migrated template, dropped after the test."""
    name = clone_database(pg, template_db)
    yield name
    drop_database(pg, name)


@pytest.fixture
def db_dsn(pg: PostgreSQLExecutor, db_name: str) -> str:
    """Connection string of the test's own database, as the superuser."""
    return make_dsn(pg, db_name)


@pytest.fixture
def app_dsn(pg: PostgreSQLExecutor, db_name: str) -> str:
    """Connection string of the test's own database, as an application login (member of sigledger_app)."""
    return make_dsn(pg, db_name, LOGINS["app"])


@pytest.fixture
def admin_dsn(pg: PostgreSQLExecutor, db_name: str) -> str:
    """Connection string of the test's own database, as an admin login (member of sigledger_admin: the API
    plus budget administration)."""
    return make_dsn(pg, db_name, LOGINS["admin"])


@pytest.fixture
def readonly_dsn(pg: PostgreSQLExecutor, db_name: str) -> str:
    """Connection string of the test's own database, as a read-only login (member of sigledger_readonly)."""
    return make_dsn(pg, db_name, LOGINS["readonly"])


@pytest.fixture
def graph_dsn(pg: PostgreSQLExecutor, db_name: str) -> str:
    """Connection string of the test's own database, as a sync-worker login (member of sigledger_graph)."""
    return make_dsn(pg, db_name, LOGINS["graph"])


@pytest.fixture
def conn(db_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit superuser connection to the test's database."""
    with psycopg.connect(db_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def empty_db_dsn(pg: PostgreSQLExecutor) -> Iterator[str]:
    """A database with nothing in it (for migration tests)."""
    name = f"empty_{os.getpid()}_{next(_counter)}"
    with admin_connect(pg) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_dsn(pg, name)
    drop_database(pg, name)


_RUN: dict[str, Any] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Give each run its own pytest temp root, under its checkout's base folder (tests/run_folders.py): not the
    shared /tmp/pytest-of-<user>, whose clean-up of old numbered folders can delete the data directory of
    another session's running cluster, and not one folder per checkout, where a second run in the checkout
    emptied the first's temp root and its end-of-run check stopped the first's servers. First, the folders
    of the checkout's runs that are gone are cleaned up (what they left running is stopped), those of the layout
    before run folders included; live runs' are left alone. An explicit --basetemp is used as given."""
    if config.option.basetemp is None:
        from tests import run_folders

        base = run_folders.base_for(ROOT)
        _RUN["swept"] = run_folders.sweep(base, checkout=ROOT)
        run = run_folders.claim(base)
        _RUN["run"] = run
        config.option.basetemp = str(run.basetemp)


def pytest_unconfigure(config: pytest.Config) -> None:
    run = _RUN.pop("run", None)
    if run is not None:
        run.release()


_LEFTOVERS: dict[str, list[str]] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture was torn down: no process the run started may still run (tests/leftovers.py)."""
    from tests import leftovers

    basetemp = str(session.config.option.basetemp)
    left = leftovers.find_any(leftovers.markers(Path(basetemp)))
    _LEFTOVERS["root"] = [basetemp]
    _LEFTOVERS["found"] = [f"{p.pid}: {p.cmdline[:300]}" for p in left]
    if left:
        _LEFTOVERS["unstoppable"] = [f"{p.pid}" for p in leftovers.stop(left)]
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # the folders of gone runs that had left something running (the others were removed silently)
    left = [gone for gone in _RUN.get("swept", []) if gone.stopped]
    if left:
        terminalreporter.section("servers left by earlier runs of this checkout that are gone")
    for gone in left:
        state = "kept: could not stop" if gone.unstoppable else "removed"
        terminalreporter.write_line(
            f"{gone.root} (pid {gone.pid}): {len(gone.stopped)} process(es) left running there stopped; {state}"
        )
        for p in gone.stopped:
            terminalreporter.write_line(f"  {p.pid}: {p.cmdline[:300]}")
    if "root" not in _LEFTOVERS:
        return
    found = _LEFTOVERS["found"]
    terminalreporter.section("servers started by this run")
    if not found:
        terminalreporter.write_line(f"none left running (processes under {_LEFTOVERS['root'][0]}: 0)")
        return
    terminalreporter.write_line(
        f"{len(found)} process(es) left running after the run, now stopped; run FAILED:", red=True
    )
    for line in found:
        terminalreporter.write_line(f"  {line}")
    if _LEFTOVERS.get("unstoppable"):
        terminalreporter.write_line(f"  could not stop: {', '.join(_LEFTOVERS['unstoppable'])}", red=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regenerate",
        action="store_true",
        default=False,
        help="rewrite the generated files (sql/schema-dump.sql, docs/api.md) from the migrated template",
    )
