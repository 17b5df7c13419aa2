"""One runner at a time: pg_try_advisory_lock polled with backoff on a connection of its own.

A blocking advisory lock would wait inside a transaction, which a concurrent index build then waits for:
deadlock. Polling a try-lock never waits inside anything.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from sigledger.core.errors import MigrationError

ADVISORY_LOCK_KEY = 0x5349474C4D494752  # "SIGLMIGR": one migration runner per database


@contextmanager
def runner_lock(
    connect: Callable[[], psycopg.Connection[Any]], wait: float, log: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the runner's advisory lock on a connection of its own for the whole run. While another runner
    holds it, say so (who, since when) at once and then every 30 s."""
    lock_conn = connect()
    try:
        started = time.monotonic()
        deadline = started + wait
        delay = 0.05
        next_note = started
        while True:
            row = lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()
            if row and row[0]:
                break
            now = time.monotonic()
            if now >= deadline:
                raise MigrationError(f"another migration runner holds the lock: {lock_holder(lock_conn)}")
            if log is not None and now >= next_note:
                log(
                    f"waiting for another migration runner ({lock_holder(lock_conn)}): "
                    f"{now - started:.0f}s of at most {wait:.0f}s (--runner-wait)"
                )
                next_note = now + 30
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)
        try:
            yield
        finally:
            with suppress(psycopg.Error):
                lock_conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    finally:
        lock_conn.close()


def live_runner(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    """The runner holding the lock now, or None."""
    row = _holder_row(conn)
    if not row:
        return None
    return {
        "pid": row[0],
        "application_name": row[1],
        "client": row[2] or "local",
        "since": f"{row[3]:%Y-%m-%d %H:%M:%S%z}",
    }


def lock_holder(conn: psycopg.Connection[Any]) -> str:
    row = _holder_row(conn)
    if not row:
        return "holder not visible (it may have just finished)"
    return f"pid {row[0]}, application '{row[1]}', client {row[2] or 'local'}, since {row[3]:%Y-%m-%d %H:%M:%S%z}"


def _holder_row(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
    return conn.execute(
        """SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start, a.state
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                  SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid = (%s::bigint >> 32)::oid AND l.objid = (%s::bigint & 4294967295)::oid""",
        (ADVISORY_LOCK_KEY, ADVISORY_LOCK_KEY),
    ).fetchone()
