"""Say what the runner waits for: a thread on a connection of its own looks at the runner's backend once a
second, and when a statement has waited for a lock (a table lock, or a CONCURRENTLY build waiting out older
transactions) for a few seconds, logs which sessions block it (pid, user, application, state, since when).
A DBA watching a deployment then knows whom to wait for or to stop, instead of seeing nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from sigledger.migrate.settings import Log

_WAITING = """
SELECT a.wait_event_type, a.wait_event, extract(epoch FROM clock_timestamp() - a.state_change)::int,
       (SELECT string_agg(format('pid %%s (user %%s, application ''%%s'', %%s since %%s)', b.pid, b.usename,
                                 b.application_name, b.state, to_char(coalesce(b.xact_start, b.backend_start),
                                 'HH24:MI:SS')), '; ' ORDER BY b.pid)
          FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid)))
  FROM pg_stat_activity a WHERE a.pid = %s
"""


@contextmanager
def watching(
    connect: Callable[[], psycopg.Connection[Any]], pid: int, log: Log, after: float = 3.0
) -> Iterator[None]:
    """Report, while the body runs, every new set of sessions that has blocked backend `pid` for `after` s."""
    stop = threading.Event()
    try:
        conn = connect()
    except psycopg.Error:  # watching is a courtesy: never a reason to fail a run
        yield
        return

    def loop() -> None:
        reported: str | None = None
        while not stop.wait(1.0):
            try:
                row = conn.execute(_WAITING, (pid,)).fetchone()
            except psycopg.Error:
                return
            if not row or row[0] != "Lock" or (row[2] or 0) < after or not row[3]:
                reported = None if not row or row[0] != "Lock" else reported
                continue
            if row[3] != reported:
                what = (
                    "older transactions (a CONCURRENTLY build)"
                    if row[1] == "virtualxid"
                    else f"a {row[1]} lock"
                )
                log(f"  waiting {row[2]}s for {what}, held by {row[3]}")
                reported = row[3]

    thread = threading.Thread(target=loop, name="sigledger-migrate-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        with suppress(psycopg.Error):
            conn.close()
