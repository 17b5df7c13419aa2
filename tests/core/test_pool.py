"""Connection lifecycle (seed report 1.1.1): the pool never leaks a connection or leaves a session idle in a
transaction, whatever the caller raises and wherever; notices go to logging; errors are translated by SQLSTATE."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from sigledger.core.db import Database
from sigledger.core.errors import (
    BudgetExceeded,
    Conflict,
    InvalidInput,
    NotFound,
    Retryable,
    SigledgerError,
    Unavailable,
    translate,
)

APP = "sigledger-pool-test"
WORKERS = 8
TRANSACTIONS = 4000
POOL_MAX = 4


class Injected(Exception):
    """A failure of the caller's own code."""


class Aborted(BaseException):
    """Not an Exception (like KeyboardInterrupt): must not leak a connection either."""


@pytest.fixture
def probe(conn: psycopg.Connection) -> str:
    conn.execute("CREATE TABLE public.pool_probe (id int PRIMARY KEY, mode text NOT NULL)")
    return "public.pool_probe"


@pytest.fixture
def db(db_dsn: str) -> Iterator[Database]:
    database = Database(db_dsn, min_size=1, max_size=POOL_MAX, application_name=APP, timeout=30)
    database.open()
    yield database
    database.close()


def _one_transaction(db: Database, i: int, mode: str) -> bool:
    """Run transaction i with a fault injected per `mode`; True when its row must be committed."""
    insert = "INSERT INTO public.pool_probe (id, mode) VALUES (%s, %s)"
    if mode == "ok":
        with db.transaction() as conn:
            conn.execute(insert, (i, mode))
        return True
    if mode == "raise_inside":  # half way through the block
        with pytest.raises(Injected), db.transaction() as conn:
            conn.execute(insert, (i, mode))
            raise Injected
    if mode == "raise_before_commit":  # all statements done, COMMIT not yet sent
        with pytest.raises(Injected), db.transaction() as conn:
            conn.execute(insert, (i, mode))
            conn.execute("SELECT 1")
            raise Injected
    if mode == "sql_error_inside":  # the server fails the transaction; the error is translated
        with pytest.raises(Conflict), db.transaction() as conn:
            conn.execute(insert, (i, mode))
            conn.execute(insert, (i, mode))  # 23505 on the same id
    if mode == "raise_after_commit":  # the seed's leak: code failing after its transaction committed
        with pytest.raises(Injected):
            with db.transaction() as conn:
                conn.execute(insert, (i, mode))
            raise Injected
        return True
    if mode == "raise_between":  # between two transactions of one unit of work: the first stays
        with pytest.raises(Injected):
            with db.transaction() as conn:
                conn.execute(insert, (i, mode))
            _ = i * 2  # code between
            raise Injected
            with db.transaction() as conn:  # never reached
                conn.execute(insert, (-i, mode))
        return True
    if mode == "connection_left_open":  # a borrowed connection left inside a transaction, then a raise
        with pytest.raises(Injected), db.connection() as conn:
            conn.execute(insert, (i, mode))
            raise Injected
    if mode == "connection_commit_then_raise":
        with pytest.raises(Injected), db.connection() as conn:
            conn.execute(insert, (i, mode))
            conn.commit()
            raise Injected
        return True
    if mode == "base_exception":
        with pytest.raises(Aborted), db.transaction() as conn:
            conn.execute(insert, (i, mode))
            raise Aborted
    if mode == "swallowed_sql_error":  # the caller catches a server error inside the block
        with db.transaction() as conn:
            conn.execute(insert, (i, mode))
            with contextlib.suppress(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1 / 0")
        return False  # PostgreSQL rolls an aborted transaction back at COMMIT
    return False


MODES = [
    "ok",
    "raise_inside",
    "raise_before_commit",
    "sql_error_inside",
    "raise_after_commit",
    "raise_between",
    "connection_left_open",
    "connection_commit_then_raise",
    "base_exception",
    "swallowed_sql_error",
]


def test_thousands_of_failing_transactions_leak_nothing(
    db: Database, probe: str, conn: psycopg.Connection
) -> None:
    rng = random.Random(20261125)
    plan = [(i, rng.choice(MODES)) for i in range(1, TRANSACTIONS + 1)]
    expected: set[int] = set()
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker(items: list[tuple[int, str]]) -> None:
        try:
            for i, mode in items:
                if _one_transaction(db, i, mode):
                    with lock:
                        expected.add(i)
        except BaseException as exc:  # reported below, with the thread's traceback
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(plan[w::WORKERS],)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert set(Counter(mode for _, mode in plan)) == set(MODES)

    # Exactly the transactions that committed left their row; every rolled-back one left nothing.
    committed = {r[0] for r in conn.execute("SELECT id FROM public.pool_probe").fetchall()}
    assert committed == expected

    # Nothing leaked: every connection is back and idle, nobody waits, and a further transaction gets a
    # connection within the pool timeout, POOL_MAX times over while holding the others.
    stats = db.pool.get_stats()
    assert stats["requests_waiting"] == 0
    assert stats["pool_available"] == stats["pool_size"] <= POOL_MAX
    with db.transaction() as a, db.transaction() as b, db.transaction() as c, db.transaction() as d:
        pids = {x.execute("SELECT pg_backend_pid()").fetchone() for x in (a, b, c, d)}
    assert len(pids) == POOL_MAX
    stuck = conn.execute(
        "SELECT count(*) FILTER (WHERE state LIKE 'idle in transaction%%'), count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s",
        (APP,),
    ).fetchone()
    assert stuck is not None and stuck[0] == 0 and 1 <= stuck[1] <= POOL_MAX
    stats = db.pool.get_stats()
    assert stats["pool_available"] == stats["pool_size"] and stats.get("requests_errors", 0) == 0


def test_database_is_created_closed_and_opened_and_closed_explicitly(
    db_dsn: str, conn: psycopg.Connection
) -> None:
    database = Database(db_dsn, min_size=1, max_size=2, application_name=APP)
    assert database.closed
    with pytest.raises(Unavailable), database.transaction() as c:  # PoolClosed, translated
        c.execute("SELECT 1")
    assert _sessions(conn) == 0  # nothing connected before open()
    database.open()
    assert not database.closed
    assert database.call_one("SELECT current_setting('application_name') AS app") == {"app": APP}
    database.close()
    assert database.closed
    assert _sessions(conn) == 0
    with Database(db_dsn, min_size=1, max_size=2, application_name=APP) as scoped:
        assert not scoped.closed
        assert scoped.call("SELECT 1 AS x") == [{"x": 1}]
    assert scoped.closed


def _sessions(conn: psycopg.Connection) -> int:
    for _ in range(100):  # a closed pool's backends exit asynchronously
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            (APP,),
        ).fetchone()
        if row == (0,):
            return 0
        conn.execute("SELECT pg_sleep(0.05)")
    return int(row[0]) if row else -1


def test_a_pool_passed_in_is_not_closed_by_us(db_dsn: str) -> None:
    with ConnectionPool(db_dsn, min_size=1, max_size=2, open=True) as pool:
        database = Database(pool=pool)
        database.open()
        assert database.call_one("SELECT 2 AS x") == {"x": 2}
        database.close()
        with Database(pool=pool) as scoped:
            scoped.call("SELECT 1")
        assert not pool.closed and not database.closed
        with pool.connection() as c:
            assert c.execute("SELECT 3").fetchone() == (3,)


def test_dead_connections_are_replaced(db: Database, conn: psycopg.Connection) -> None:
    with db.transaction() as c:
        c.execute("SELECT 1")
    killed = conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s",
        (APP,),
    ).fetchone()
    assert killed is not None and killed[0] >= 1
    for _ in range(10):  # each borrow checks the connection first and replaces a dead one
        assert db.call_one("SELECT 1 AS ok") == {"ok": 1}


def test_server_notices_go_to_logging(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="sigledger.db"), db.transaction() as c:
        c.execute(
            "DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful: %', 'x'; "
            "RAISE DEBUG 'invisible'; END $$"
        )
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "sigledger.db"]
    assert (logging.INFO, "server NOTICE: hello 42") in records
    assert (logging.WARNING, "server WARNING: careful: x") in records


@pytest.mark.parametrize(
    ("body", "cls", "sqlstate"),
    [
        (
            "RAISE EXCEPTION USING ERRCODE = 'SLB01', MESSAGE = 'budget b1 exceeded', "
            "DETAIL = 'remaining 0.50', HINT = 'raise the limit'",
            BudgetExceeded,
            "SLB01",
        ),
        ("RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = 'no agent 42'", NotFound, "P0002"),
        ("RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'bad amount NaN'", InvalidInput, "22023"),
        ("RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'serialization'", Retryable, "40001"),
        ("RAISE EXCEPTION USING ERRCODE = '55P03', MESSAGE = 'lock not available'", Retryable, "55P03"),
        ("RAISE EXCEPTION USING ERRCODE = '22P05', MESSAGE = 'some data exception'", InvalidInput, "22P05"),
    ],
)
def test_errors_are_translated_by_sqlstate(
    db: Database, body: str, cls: type[SigledgerError], sqlstate: str
) -> None:
    with pytest.raises(cls) as caught, db.transaction() as c:
        c.execute(f"DO $$ BEGIN {body}; END $$")
    err = caught.value
    assert type(err) is cls and err.sqlstate == sqlstate
    assert isinstance(err.__cause__, psycopg.Error)
    if sqlstate == "SLB01":
        assert str(err) == "budget b1 exceeded"
        assert err.detail == "remaining 0.50" and err.hint == "raise the limit"
    # the pool is intact after every error
    assert db.call_one("SELECT 1 AS ok") == {"ok": 1}


def test_constraint_violation_names_the_constraint(db: Database, probe: str) -> None:
    db.call("INSERT INTO public.pool_probe (id, mode) VALUES (1, 'x')")
    with pytest.raises(Conflict) as caught:
        db.call("INSERT INTO public.pool_probe (id, mode) VALUES (1, 'y')")
    assert caught.value.sqlstate == "23505" and caught.value.constraint == "pool_probe_pkey"


def test_unmapped_error_passes_through_untouched(db: Database) -> None:
    """An error with no sigledger class is re-raised as the psycopg error itself, with a sane chain."""
    for use in ("transaction", "call"):
        with pytest.raises(psycopg.errors.UndefinedTable) as caught:
            if use == "call":
                db.call("SELECT * FROM no_such_table")
            else:
                with db.transaction() as c:
                    c.execute("SELECT * FROM no_such_table")
        assert caught.value.__cause__ is not caught.value  # no self-referencing cause
    assert translate(ValueError("x")).__class__ is ValueError
