"""The read API on a hot standby: a streaming replica of the test cluster, made with pg_basebackup and started
on loopback, answers every report as sigledger_readonly with the primary's figures once it has replayed, and
refuses writes (25006)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pytest_postgresql.executors import PostgreSQLExecutor
from sigledger.core.localdb import as_server_user, free_port, pg_bindir

from tests.conftest import LOGINS, make_dsn
from tests.reports.helpers import ROOT, cli_process, env, record, run, sigledger
from tests.reports.test_read_api import seed

READS = [
    "SELECT * FROM sigledger.spend_report(now() - interval '30 days', now(), '{team,model}')",
    "SELECT * FROM sigledger.spend_report(now() - interval '30 days', now(), '{day,agent}')",
    "SELECT * FROM sigledger.spend_top(now() - interval '30 days', now(), '{model}', 2)",
    "SELECT * FROM sigledger.budget_tree()",
    "SELECT * FROM sigledger.budgets_near_limit(0.1)",
    "SELECT * FROM sigledger.list_agents()",
    "SELECT reservation_id, agent, estimate_usd, overdue FROM sigledger.open_reservations()",
    "SELECT * FROM sigledger.list_model_prices()",
    "SELECT * FROM sigledger.budget_alert_feed()",
    "SELECT metric, labels, value FROM sigledger.metrics_snapshot() ORDER BY 1, 2::text",
]


class Standby:
    def __init__(self, primary: PostgreSQLExecutor) -> None:
        self.primary = primary
        # under /var/tmp: the postgres OS user must reach it (pytest's temp root is private to us)
        self.root = Path(tempfile.mkdtemp(prefix="sigledger-standby-", dir="/var/tmp"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.port = free_port()

    def start(self) -> None:
        # a hot standby needs these at least as high as its primary's
        names = (
            "max_connections",
            "max_locks_per_transaction",
            "max_prepared_transactions",
            "max_worker_processes",
            "max_wal_senders",
        )
        with psycopg.connect(make_dsn(self.primary, "postgres"), autocommit=True) as p:
            settings = " ".join(
                f"-c {n}={p.execute(f'SHOW {n}').fetchone()[0]}"
                for n in names  # type: ignore[index]
            )
        subprocess.run(
            as_server_user(
                [
                    str(pg_bindir() / "pg_basebackup"),
                    "-h",
                    str(self.primary.host),
                    "-p",
                    str(self.primary.port),
                    "-U",
                    str(self.primary.user),
                    "-D",
                    str(self.data),
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=300,
        )
        subprocess.run(
            as_server_user(
                [
                    str(pg_bindir() / "pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "120",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "standby.log"),
                    "-o",
                    f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c hot_standby=on "
                    f"-c fsync=off {settings}",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=180,
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                as_server_user(
                    [str(pg_bindir() / "pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(self.data)]
                ),
                capture_output=True,
                check=False,
                timeout=120,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str, user: str = LOGINS["readonly"]) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def wait_replayed(self, primary_dsn: str, timeout: float = 120) -> None:
        """Until the standby has replayed everything the primary had written (a wait, not a timing claim).
        The insert position, not the write position: the test cluster commits asynchronously
        (synchronous_commit=off), so recent commits may still sit in the primary's WAL buffers."""
        with psycopg.connect(primary_dsn, autocommit=True) as p:
            target = p.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn("postgres", "postgres"), autocommit=True) as s:
                    done = s.execute(
                        "SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                    ).fetchone()
                if done and done[0]:
                    return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the standby did not replay the primary's WAL in time")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def standby(pg: PostgreSQLExecutor, template_db: str) -> Iterator[Standby]:
    node = Standby(pg)
    try:
        node.start()
        yield node
    finally:
        node.stop()


def _rows(dsn: str) -> list[list[tuple[object, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return [c.execute(sql).fetchall() for sql in READS]


def test_reports_on_a_hot_standby(
    standby: Standby, conn: psycopg.Connection, db_dsn: str, db_name: str, readonly_dsn: str
) -> None:
    s = seed(conn)
    conn.execute("SELECT sigledger.add_model_price('openai', 'gpt', 1, 2)")
    conn.execute("SELECT sigledger.reserve_budget(%s, 0.25)", (s["agents"]["ra"],))
    record(db_dsn, "rb", "0.9", "replica-alert")  # rb: 0.9 of $1, an alert at 80%
    standby.wait_replayed(db_dsn)

    on_standby = _rows(standby.dsn(db_name))
    assert on_standby == _rows(readonly_dsn)
    assert all(on_standby), "every read returned rows"

    with psycopg.connect(standby.dsn(db_name, LOGINS["app"]), autocommit=True) as app:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            app.execute(
                "SELECT sigledger.record_cost('replica-write', sigledger.find_agent('ra'), 'm', 'p', 0, 0, 1)"
            )
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            app.execute("LISTEN sigledger_budget_alert")  # budget watch runs against the primary
        lag = app.execute("SELECT now() - pg_last_xact_replay_timestamp() >= interval '0'").fetchone()
    assert lag == (True,)

    # the CLI and the exporter, pointed at the replica as the docs say
    report = cli_process("cost", "report", "--by", "team", "--json", "--dsn", standby.dsn(db_name))
    assert report.returncode == 0, report.stderr
    assert (
        json.loads(report.stdout)[-1]["spend_usd"]
        == json.loads(run(readonly_dsn, "cost", "report", "--by", "team", "--json").output)[-1]["spend_usd"]
    )
    port = free_port()
    exporter = subprocess.Popen(
        sigledger("metrics", "serve", "--dsn", standby.dsn(db_name), "--port", str(port)), cwd=ROOT, env=env()
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    text = resp.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)
    assert "sigledger_database_up 1.0" in text and 'sigledger_budgets{level="agent",state="near"} 1.0' in text


def test_the_standby_is_a_real_streaming_replica(standby: Standby, pg: PostgreSQLExecutor) -> None:
    with psycopg.connect(make_dsn(pg, "postgres"), autocommit=True) as p:
        senders = p.execute("SELECT state FROM pg_stat_replication").fetchall()
    assert ("streaming",) in senders
