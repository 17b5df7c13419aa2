"""The released upgrade path runs beside a live application (real concurrent sessions, interleavings forced at
known points, never a duration asserted):

- V4_001's charged_at backfill runs in batches outside any lock that blocks inserts: held up at a row an
  application locked, it lets other inserts through;
- V4_004 reads and writes the ledger (the key registry backfill) before its swap, under no lock that blocks
  inserts;
- the issue's deadlock: an application transaction that inserts a ledger row, then updates its agent, racing
  V4_002: both finish (no step of V4_002 holds one of those tables while it waits for the other);
- a deadlock the runner does lose (40P01) is retried like a lock timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from sigledger.migrate import Migrator, Settings

from tests.migrate.helpers import fixture_set

AGENT = "00000000-0000-0000-0000-0000000000c1"


def wait_until(what: str, predicate: Callable[[], bool], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for: {what}"
        time.sleep(0.05)


def waiting_for_lock(conn: psycopg.Connection, pid: int, event: str | None = None) -> bool:
    row = conn.execute(
        "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return bool(row and row[0] == "Lock" and (event is None or row[1] == event))


def runner_pid(conn: psycopg.Connection) -> int | None:
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'sigledger-migrate' AND datname = current_database() "
        "AND state = 'active' AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "AND query NOT ILIKE '%pg_try_advisory_lock%' AND query NOT ILIKE '%pg_stat_activity%' LIMIT 1"
    ).fetchone()
    return int(row[0]) if row else None


class Runner(threading.Thread):
    def __init__(self, dsn: str, to: str, **settings: object) -> None:
        super().__init__(daemon=True)
        self.log: list[str] = []
        self.error: BaseException | None = None
        self.migrator = Migrator(dsn, settings=Settings(**settings), log=self.log.append)  # type: ignore[arg-type]
        self.to = to

    def run(self) -> None:
        try:
            self.migrator.up(to=self.to)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> None:
        self.join(timeout=300)
        assert not self.is_alive(), "runner did not finish"
        assert self.error is None, f"{self.error}\n" + "\n".join(self.log)


def _ledger(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO sigledger.agent_registry (id, name) VALUES (%s, 'online')", (AGENT,))
        conn.execute(
            """INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd, created_at)
               SELECT 'old-' || g, %s, 'm', 'p', 0.001, now() - interval '1 hour' FROM generate_series(1, %s) g""",
            (AGENT, rows),
        )


def _insert(dsn: str, key: str) -> None:
    """An application insert with a bounded wait: it fails (55P03) if a migration lock blocks it."""
    with psycopg.connect(dsn, autocommit=True) as app:
        app.execute("SET lock_timeout = '20s'")
        app.execute(
            "INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd) "
            "VALUES (%s, %s, 'm', 'p', 0.5)",
            (key, AGENT),
        )


def test_v4_001_backfill_lets_inserts_through(empty_db_dsn: str) -> None:
    Migrator(empty_db_dsn).up(to="V3_011")
    _ledger(empty_db_dsn, 25_000)
    at_backfill, go = threading.Event(), threading.Event()

    def pause(where: str) -> None:
        if where == "V4_001__cost_ledger:9":  # the charged_at backfill (step 3), the new columns are in
            at_backfill.set()
            assert go.wait(120)

    with (
        psycopg.connect(empty_db_dsn, autocommit=True) as holder,
        psycopg.connect(empty_db_dsn, autocommit=True) as watch,
    ):
        runner = Runner(empty_db_dsn, "V4_001", lock_timeout="30s", before_step=pause)
        runner.start()
        assert at_backfill.wait(120), "\n".join(runner.log)
        # an application transaction holds one row: the backfill's batch that reaches it waits for it
        holder.execute("BEGIN")
        holder.execute("SELECT FROM sigledger.llm_cost_log WHERE idempotency_key = 'old-15000' FOR UPDATE")
        go.set()
        wait_until(
            "the backfill waiting for the held row",
            lambda: (pid := runner_pid(watch)) is not None and waiting_for_lock(watch, pid, "transactionid"),
        )
        # ordered by: the backfill holds row locks of one batch (and ROW EXCLUSIVE), never a table lock that
        # conflicts with ROW EXCLUSIVE: this insert does not wait for it
        _insert(empty_db_dsn, "during-backfill")
        holder.execute("COMMIT")
        runner.finish()
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE charged_at = created_at) FROM sigledger.llm_cost_log"
        ).fetchone() == (25_001, 25_001)  # the new row: charged_at and created_at both now()
        assert conn.execute(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'sigledger.llm_cost_log'::regclass "
            "AND attname = 'charged_at'"
        ).fetchone() == (True,)


def test_v4_004_backfills_the_key_registry_without_blocking_inserts(empty_db_dsn: str) -> None:
    Migrator(empty_db_dsn).up(to="V4_003")
    _ledger(empty_db_dsn, 5_000)
    at_backfill = threading.Event()
    go = threading.Event()

    def pause(where: str) -> None:
        if where == "V4_004__ledger_partitions:7":  # the registry backfill (step 2)
            at_backfill.set()
            assert go.wait(120)

    with (
        psycopg.connect(empty_db_dsn, autocommit=True) as holder,
        psycopg.connect(empty_db_dsn, autocommit=True) as watch,
    ):
        runner = Runner(empty_db_dsn, "V4_004", lock_timeout="30s", before_step=pause)
        runner.start()
        assert at_backfill.wait(120), "\n".join(runner.log)
        # an uncommitted registry row with the key of ledger row 3000: the backfill's INSERT ... ON CONFLICT
        # waits for this transaction when it reaches that key
        holder.execute("BEGIN")
        holder.execute(
            "INSERT INTO sigledger.llm_cost_log_key (idempotency_key, ledger_id, created_at) "
            "SELECT idempotency_key, id, created_at FROM sigledger.llm_cost_log WHERE idempotency_key = 'old-3000'"
        )
        go.set()
        wait_until(
            "the registry backfill waiting for the held key",
            lambda: (pid := runner_pid(watch)) is not None and waiting_for_lock(watch, pid, "transactionid"),
        )
        _insert(empty_db_dsn, "during-registry-backfill")  # registered by the trigger of step 1
        holder.execute("ROLLBACK")
        runner.finish()
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = 'sigledger.llm_cost_log'::regclass"
        ).fetchone() == ("p",)
        assert conn.execute(
            "SELECT count(*) FROM sigledger.llm_cost_log l JOIN sigledger.llm_cost_log_key k ON k.ledger_id = l.id "
            "AND k.idempotency_key = l.idempotency_key"
        ).fetchone() == (5_001,)


def test_application_transaction_racing_v4_002_completes_and_so_does_the_runner(empty_db_dsn: str) -> None:
    """The issue's deadlock: the application inserts a ledger row, then updates its agent, while V4_002 runs.
    Ordered by: each V4_002 step locks at most one of those tables, so the runner waits for the application's
    ledger lock holding nothing the application's UPDATE needs."""
    Migrator(empty_db_dsn).up(to="V4_001")
    _ledger(empty_db_dsn, 100)
    with (
        psycopg.connect(empty_db_dsn, autocommit=True) as app,
        psycopg.connect(empty_db_dsn, autocommit=True) as watch,
    ):
        app.execute("BEGIN")
        app.execute(
            "INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd) "
            "VALUES ('racing', %s, 'm', 'p', 0.5)",
            (AGENT,),
        )
        runner = Runner(empty_db_dsn, "V4_002", lock_timeout="30s")
        runner.start()
        wait_until(
            "V4_002 waiting for the application's ledger lock", lambda: _waits_on(watch, "llm_cost_log")
        )
        app.execute("SET lock_timeout = '20s'")
        app.execute(
            "UPDATE sigledger.agent_registry SET current_cost_usd = current_cost_usd + 0.5 WHERE id = %s",
            (AGENT,),
        )
        app.execute("COMMIT")
        runner.finish()
    assert not [line for line in runner.log if "deadlock" in line], runner.log


def _waits_on(conn: psycopg.Connection, table: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND l.relation = %s::regclass AND a.application_name = 'sigledger-migrate'",
        (f"sigledger.{table}",),
    ).fetchone()
    return bool(row and row[0])


def test_a_deadlock_the_runner_loses_is_retried(empty_db_dsn: str, tmp_path: Path) -> None:
    fx = fixture_set("deadlock", tmp_path)
    fx.migrator(empty_db_dsn).up(to="1")
    log: list[str] = []
    errors: list[BaseException] = []
    migrator = fx.migrator(empty_db_dsn, log, lock_timeout="30s", retries=3, retry_base_delay=0.1)

    def run() -> None:
        try:
            migrator.up()
        except BaseException as exc:
            errors.append(exc)

    with (
        psycopg.connect(empty_db_dsn, autocommit=True) as app,
        psycopg.connect(empty_db_dsn, autocommit=True) as watch,
    ):
        app.execute("BEGIN")
        # this session checks for deadlocks late, so the runner (deadlock_timeout 1s) is the one that detects
        # the cycle and is rolled back
        app.execute("SET LOCAL deadlock_timeout = '60s'")
        app.execute("LOCK TABLE fx.b IN ROW EXCLUSIVE MODE")
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        wait_until("V2 holding fx.a and waiting for fx.b", lambda: _waits_on_fx(watch, "b"))
        app.execute("LOCK TABLE fx.a IN ROW EXCLUSIVE MODE")  # the cycle; the runner loses it
        app.execute("COMMIT")
        thread.join(timeout=120)
    assert not thread.is_alive() and not errors, errors
    assert any("deadlock, retry 1/3" in line for line in log), log
    with psycopg.connect(empty_db_dsn) as conn:
        assert conn.execute(
            "SELECT version FROM sigledger_meta.schema_history ORDER BY version_key"
        ).fetchall() == [
            ("1",),
            ("2",),
        ]


def _waits_on_fx(conn: psycopg.Connection, table: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND l.relation = %s::regclass AND a.application_name = 'sigledger-migrate'",
        (f"fx.{table}",),
    ).fetchone()
    return bool(row and row[0])
