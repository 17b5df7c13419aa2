"""How a following sync worker sleeps: LISTEN sigledger_outbox (sigledger._outbox_emit notifies at commit),
with a polling fallback, so a lost notification (or a lost LISTEN connection) only delays."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg

from sigledger.core.db import connect as db_connect
from sigledger.core.errors import Unavailable

log = logging.getLogger("sigledger.graph.worker")

CHANNEL = "sigledger_outbox"


class Wakeup:
    def __init__(self, dsn: str, name: str, poll_interval: float, stop: threading.Event) -> None:
        self.dsn = dsn
        self.name = name
        self.poll_interval = poll_interval
        self.stop = stop
        self._conn: psycopg.Connection[Any] | None = None

    def listen(self) -> None:
        try:
            self._conn = db_connect(self.dsn, application_name=f"{self.name}-listen", autocommit=True)
            self._conn.execute(f"LISTEN {CHANNEL}")
        except (psycopg.OperationalError, Unavailable) as exc:
            self._conn = None
            log.warning("LISTEN unavailable (%s); polling every %.1fs", exc, self.poll_interval)

    def wait(self) -> None:
        """Sleep until a notification or the poll interval."""
        if self._conn is None or self._conn.closed:
            self.listen()
            if self._conn is None:
                self.stop.wait(self.poll_interval)
                return
        try:
            # In slices of at most a second, so a stop request is seen promptly during a long poll interval.
            deadline = time.monotonic() + self.poll_interval
            while not self.stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if any(True for _ in self._conn.notifies(timeout=min(remaining, 1.0), stop_after=1)):
                    break
        except psycopg.OperationalError:
            # Lost: the poll interval still bounds the delay; reconnect on the next wait.
            self._conn.close()
            self.stop.wait(self.poll_interval)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
