# Generated from sigledger/core/adb.py by tools/async_to_sync.py: do not edit, change the async source
# and run `make sync-gen`.
"""Connection lifecycle: one pool, opened and closed explicitly, and a transaction helper.

The seed leaked connections when code failed after COMMIT (report 1.1.1). Here a connection is only ever
borrowed through a ``with`` block: it goes back to the pool on every path, commit or rollback, and the pool
resets (rolls back) anything a caller left open. The roles also carry idle_in_transaction_session_timeout as a
server-side safety net.

``open()`` waits at most ``connect_timeout`` seconds (default: the DSN's connect_timeout, else
PGCONNECT_TIMEOUT, else 5) for the first connection and then raises ``Unavailable`` naming the host, the port
and the cause. After an outage the pool retries at most every ``reconnect_delay`` seconds (psycopg_pool alone
backs off to minutes), so the first call after the server is back finds a connection. A session that answered
25006 (read-only: it started on an old primary, a standby, a database set read-only) is closed, not returned.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from sigledger.core.dsn import (
    DEFAULT_APPLICATION_NAME,
    DEFAULT_RECONNECT_DELAY,
    BoundedAttempt,
    default_dsn,
    dsn_connect_timeout,
    log_notice,
    reraise,
    target,
)
from sigledger.core.errors import RECONNECT_SQLSTATES, Unavailable

__all__ = ["DEFAULT_APPLICATION_NAME", "Database", "connect", "default_dsn"]


def _configure(conn: Connection[Any]) -> None:
    conn.add_notice_handler(log_notice)


def connect(
    dsn: str,
    *,
    application_name: str = DEFAULT_APPLICATION_NAME,
    autocommit: bool = False,
    connect_timeout: float | None = None,
    **kwargs: Any,
) -> Connection[Any]:
    """A single connection (the migration runner and the CLI use these; services use ``Database``);
    ``Unavailable`` naming host, port and cause when the server cannot be reached within connect_timeout
    (default: the DSN's, else PGCONNECT_TIMEOUT, else 5 s)."""
    if connect_timeout is None:
        connect_timeout = dsn_connect_timeout(dsn)
    kwargs.setdefault("connect_timeout", max(2, round(connect_timeout)))  # libpq's minimum is 2 s
    try:
        conn = Connection.connect(dsn, application_name=application_name, autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        host, port = target(dsn)
        raise Unavailable(
            f"cannot connect to PostgreSQL at {host} port {port}: {str(exc).strip()}", host=host, port=port
        ) from exc
    except psycopg.Error as exc:
        reraise(exc)
    _configure(conn)
    return conn


class _Pool(ConnectionPool):
    """The pool with a bounded reconnection backoff, remembering the last connection error (for open()'s message).

    It overrides psycopg_pool's ``_add_connection`` and ``_connect`` (private, stable across 3.2 and 3.3);
    tests/core/test_pool.py checks the behaviour, so an upgrade that changes them fails there."""

    def __init__(self, *args: Any, reconnect_delay: float, **kwargs: Any) -> None:
        self.reconnect_delay = reconnect_delay
        self.last_error: BaseException | None = None
        super().__init__(*args, **kwargs)

    def _connect(self, timeout: float | None = None) -> Any:
        try:
            conn = super()._connect(timeout)
        except Exception as exc:
            self.last_error = exc
            raise
        self.last_error = None
        return conn

    def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        if attempt is None:
            attempt = BoundedAttempt(timeout=self.reconnect_timeout, max_delay=self.reconnect_delay)
        super()._add_connection(attempt, growing=growing)


class Database:
    """Owns a psycopg_pool ConnectionPool.

    Created closed; ``open()`` and ``close()`` are explicit (or use it as a context manager). A pool passed in
    by the caller is used as is and never closed by us.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: ConnectionPool | None = None,
        min_size: int = 1,
        max_size: int = 10,
        application_name: str = DEFAULT_APPLICATION_NAME,
        timeout: float = 30.0,
        connect_timeout: float | None = None,
        reconnect_delay: float = DEFAULT_RECONNECT_DELAY,
    ) -> None:
        self._owned = pool is None
        if pool is not None:
            self.dsn = pool.conninfo if isinstance(pool.conninfo, str) else ""
        else:
            self.dsn = dsn if dsn is not None else default_dsn()
        self.connect_timeout = (
            connect_timeout if connect_timeout is not None else dsn_connect_timeout(self.dsn)
        )
        if pool is None:
            pool = _Pool(
                conninfo=self.dsn,
                min_size=min_size,
                max_size=max_size,
                kwargs={
                    "application_name": application_name,
                    "connect_timeout": max(2, round(self.connect_timeout)),  # libpq's minimum is 2 s
                },
                configure=_configure,
                check=ConnectionPool.check_connection,  # dead connections are replaced, not handed out
                timeout=timeout,
                open=False,
                name=application_name,
                reconnect_delay=reconnect_delay,
            )
        self.pool = pool

    def open(self, *, wait: bool = True, timeout: float | None = None) -> Database:
        """Open the pool; with ``wait`` (the default) fail within ``timeout`` (default: connect_timeout) with
        ``Unavailable`` naming host, port and cause when the server cannot be reached."""
        if not self._owned:
            return self
        limit = self.connect_timeout if timeout is None else timeout
        try:
            self.pool.open(wait=wait, timeout=limit)
        except PoolTimeout as exc:
            cause = getattr(self.pool, "last_error", None)
            self.pool.close(timeout=0)
            host, port = target(self.dsn)
            why = str(cause).strip() if cause is not None else "no connection within the timeout"
            raise Unavailable(
                f"cannot reach PostgreSQL at {host} port {port} within {limit:g} s: {why}",
                host=host,
                port=port,
            ) from exc
        return self

    def close(self, timeout: float = 10.0) -> None:
        if self._owned:
            self.pool.close(timeout=timeout)

    @property
    def closed(self) -> bool:
        return self.pool.closed

    def __enter__(self) -> Database:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def connection(self) -> Iterator[Connection[Any]]:
        """Borrow a connection; it is returned to the pool on every path."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            reraise(exc)

    @contextmanager
    def transaction(self, *, read_committed: bool = False) -> Iterator[Connection[Any]]:
        """One transaction: COMMIT when the block ends normally, ROLLBACK when it raises.

        The connection goes back to the pool in every case, including an exception raised after COMMIT
        (the seed's leak), because the pool's own context manager owns the release.
        ``read_committed``: the transaction runs in READ COMMITTED whatever the session's default
        (default_transaction_isolation), for the calls that refuse any other level with 25000 (docs/errors.md).
        """
        try:
            with self.pool.connection() as conn:
                try:
                    with conn.transaction():
                        if read_committed:
                            conn.execute(b"SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        yield conn
                except Exception as exc:
                    if getattr(exc, "sqlstate", None) in RECONNECT_SQLSTATES:
                        # a session that started read-only stays so: closed, the pool replaces it, and the next
                        # call gets a new session (on the new primary, or once the database is writable again)
                        conn.close()
                    raise
        except psycopg.Error as exc:
            reraise(exc)

    def call(self, sql: str, params: Any = None, *, read_committed: bool = False) -> list[dict[str, Any]]:
        """Run one statement (a stored function call) in its own transaction; rows as dicts.
        ``read_committed``: in READ COMMITTED whatever the session's default (see ``transaction``)."""
        with (
            self.transaction(read_committed=read_committed) as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            try:
                cur.execute(sql.encode(), params)
            except psycopg.Error as exc:
                reraise(exc)
            return cur.fetchall() if cur.description else []

    def call_one(
        self, sql: str, params: Any = None, *, read_committed: bool = False
    ) -> dict[str, Any] | None:
        rows = self.call(sql, params, read_committed=read_committed)
        return rows[0] if rows else None
