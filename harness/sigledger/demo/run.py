"""The main job (`sigledger demo`): a realistic run of the whole pipeline against one database.

What it does, in order (docs: README "make demo"):

1. Database: a throwaway local cluster (``sigledger.core.localdb``) whose ``sigledger_demo`` database is dropped and
   recreated every run, migrated, and used through a login that is a member of ``sigledger_admin`` (the
   application's API plus budget administration, no table privilege; the graph worker's login is a member of
   ``sigledger_graph``: nobody logs in as a group); or an
   existing database (``--dsn``), where every name carries a per-run token so that runs never collide.
2. Budgets: one hot agent, many small ones, all under a team budget smaller than the sum of theirs; some
   agents fail open, the others fail closed; alert thresholds at 50/80/100 % of each limit.
3. Concurrently: worker threads make simulated LLM calls through one ``BudgetGuard`` (reserve -> call with
   random latency and cost -> settle; sometimes above the estimate, sometimes an exception that releases the
   hold), a short simulated outage of the budget database lets fail-open agents through (their costs go to
   the ``CostTracker``) and refuses fail-closed ones; meanwhile a generated feed of signals with entity
   mentions and aliases is ingested in batches (``sigledger.ingest.client``), with embedding costs recorded through
   the tracker.
4. Opportunities created per entity, signals linked, duplicates merged (``merge_opportunities``), entity
   variants merged into their canonical entity. All along, a graph sync worker follows the outbox into Neo4j
   (``sigledger.demo.graph``: the local server, or ``--neo4j-uri``); at the end it drains and verifies.
5. Report and checks: spend of every budget against its cap, the demo's own tally of acknowledged costs
   equal to the database's recorded spend, reconcile_budgets without drift, no hold left open, nothing left
   in the spool, no graph drift. Any violation exits 1.

SIGINT/SIGTERM: no new call starts and no new batch is read; calls in flight settle (or release), the
tracker flushes, the report is printed, and the exit code is 130 (SIGINT) or 143 (SIGTERM) when every check
holds, 1 when one does not.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from sigledger.core.errors import SigledgerError
from sigledger.core.localdb import LocalCluster
from sigledger.demo import report
from sigledger.demo.session import Demo
from sigledger.demo.workload import (
    DEMO_DATABASE,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_VIOLATION,
    DemoConfig,
)

log = logging.getLogger("sigledger.demo")

ADMIN_LOGIN, GRAPH_LOGIN = "sigledger_demo_admin", "sigledger_demo_graph"
DEMO_LOGINS = {ADMIN_LOGIN: "admin", GRAPH_LOGIN: "graph"}


def prepare_local_database(err: TextIO, cluster: LocalCluster | None = None) -> tuple[str, str]:
    """Start the local cluster, drop and recreate the demo database, migrate it. Returns the DSNs of the app
    role (the demo's calls) and of the superuser (the graph sync)."""
    import psycopg

    from sigledger.migrate import Migrator, Settings
    from sigledger.migrate.roles import create_login

    cluster = cluster or LocalCluster.default()
    cluster.start()
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DEMO_DATABASE}")
    started = time.monotonic()
    # a scratch cluster: groups that an earlier release made LOGIN roles are retired without asking
    applied = Migrator(cluster.dsn(DEMO_DATABASE), settings=Settings(retire_group_logins=True)).up()
    # The demo administers budgets and makes calls (a member of sigledger_admin: the API plus budget
    # administration); its graph worker is a member of sigledger_graph, like a deployed one. Logins as a
    # deployment makes them (`sigledger role create-login`), with the server-side timeouts on the login.
    with psycopg.connect(cluster.dsn(DEMO_DATABASE), autocommit=True) as conn:
        for login, group in DEMO_LOGINS.items():
            create_login(conn, login, group)
    err.write(
        f"local cluster {cluster.dsn(DEMO_DATABASE, user=ADMIN_LOGIN)} (stays up; `sigledger db down` stops it): "
        f"database recreated, {len(applied)} migration steps in {time.monotonic() - started:.1f}s\n"
    )
    return cluster.dsn(DEMO_DATABASE, user=ADMIN_LOGIN), cluster.dsn(DEMO_DATABASE, user=GRAPH_LOGIN)


def migrate_existing(dsn: str, err: TextIO) -> None:
    """Apply what is pending (a no-op when up to date). An application role may not even read the history:
    then the schema is taken as deployed, and the first API call says otherwise if it is not."""
    import psycopg

    from sigledger.migrate import Migrator

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper OR (EXISTS (SELECT FROM pg_roles WHERE rolname = 'sigledger_owner') "
            "AND pg_has_role(current_user, 'sigledger_owner', 'MEMBER')) FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    if not (row and row[0]):
        err.write(
            "not migrating: this login is not a member of sigledger_owner (the schema is taken as deployed)\n"
        )
        return
    try:
        Migrator(dsn).up()
    except (psycopg.errors.InsufficientPrivilege, SigledgerError) as exc:
        if getattr(exc, "sqlstate", None) != "42501":
            raise
        err.write("not migrating: this role may not (the schema is taken as deployed)\n")


def run(
    cfg: DemoConfig,
    *,
    dsn: str | None = None,
    neo4j_uri: str | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    report_json: Path | None = None,
    cluster: LocalCluster | None = None,
    with_graph: bool = True,
) -> int:
    """Run the demo; returns the exit code (0 ok, 1 a check failed, 130/143 interrupted with every check held)."""
    if not with_graph:
        graph = "--no-graph"
    elif dsn is not None and neo4j_uri is None:
        graph = "an existing database (--dsn) is projected only into an existing Neo4j: pass --neo4j-uri"
    elif importlib.util.find_spec("sigledger.graph.worker") is None:
        graph = "the graph projection is not part of this build"
    else:
        graph = "on"
    if dsn is None:
        dsn, owner_dsn = prepare_local_database(err, cluster)
    else:
        migrate_existing(dsn, err)
        owner_dsn = dsn
    demo = Demo(dsn, cfg, out=out, err=err, neo4j_uri=neo4j_uri, owner_dsn=owner_dsn, graph=graph)
    quieted = []
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        # every fail-open call and breaker transition would log a warning: the status line counts them instead
        for name in ("sigledger.budget", "sigledger.breaker"):
            logger = logging.getLogger(name)
            quieted.append((logger, logger.level))
            logger.setLevel(logging.ERROR)
    handlers: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, demo.request_stop)
    try:
        demo.execute()
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
        for logger, level in quieted:
            logger.setLevel(level)
    rep = demo.report
    if rep.violations:
        rep.exit_code = EXIT_VIOLATION
    elif rep.interrupted == "SIGINT":
        rep.exit_code = EXIT_SIGINT
    elif rep.interrupted == "SIGTERM":
        rep.exit_code = EXIT_SIGTERM
    else:
        rep.exit_code = EXIT_OK
    report.print_report(rep, out)
    if report_json is not None:
        report_json.write_text(rep.to_json())
    return rep.exit_code
