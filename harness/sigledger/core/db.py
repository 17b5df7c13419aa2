"""Connection lifecycle: one pool, opened and closed explicitly, and a transaction helper.

The seed leaked connections when code failed after COMMIT (report 1.1.1). Here a connection is only ever
borrowed through a ``with`` block: it goes back to the pool on every path, commit or rollback, and the pool
resets (rolls back) anything a caller left open. The roles also carry idle_in_transaction_session_timeout as a
server-side safety net.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import psycopg
from psycopg import Connection
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from sigledger.core.errors import translate

log = logging.getLogger("sigledger.db")

DEFAULT_APPLICATION_NAME = "sigledger"


def default_dsn() -> str:
    """SIGLEDGER_DSN, else the local cluster started by ``sigledger db up``, else libpq defaults."""
    dsn = os.environ.get("SIGLEDGER_DSN")
    if dsn:
        return dsn
    from sigledger.core.localdb import LocalCluster

    local = LocalCluster.default()
    if local.is_running():
        return local.dsn()
    return ""


def _reraise(exc: psycopg.Error) -> NoReturn:
    """Raise the sigledger exception for ``exc``; an error without one is re-raised as it is (not chained to
    itself, as ``raise translate(exc) from exc`` did)."""
    translated = translate(exc)
    if translated is exc:
        raise exc
    raise translated from exc


def _log_notice(diag: psycopg.errors.Diagnostic) -> None:
    level = {"WARNING": logging.WARNING, "NOTICE": logging.INFO, "INFO": logging.INFO}.get(
        diag.severity_nonlocalized or "", logging.DEBUG
    )
    log.log(level, "server %s: %s", diag.severity, diag.message_primary)


def _configure(conn: Connection[Any]) -> None:
    conn.add_notice_handler(_log_notice)


def connect(
    dsn: str, *, application_name: str = DEFAULT_APPLICATION_NAME, autocommit: bool = False, **kwargs: Any
) -> Connection[Any]:
    """A single connection (the migration runner and the CLI use these; services use ``Database``)."""
    try:
        conn = psycopg.connect(dsn, application_name=application_name, autocommit=autocommit, **kwargs)
    except psycopg.Error as exc:
        _reraise(exc)
    _configure(conn)
    return conn


class Database:
    """Owns a psycopg_pool.ConnectionPool.

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
    ) -> None:
        self._owned = pool is None
        if pool is None:
            pool = ConnectionPool(
                conninfo=dsn if dsn is not None else default_dsn(),
                min_size=min_size,
                max_size=max_size,
                kwargs={"application_name": application_name},
                configure=_configure,
                check=ConnectionPool.check_connection,  # dead connections are replaced, not handed out
                timeout=timeout,
                open=False,
                name=application_name,
            )
        self.pool = pool

    def open(self, *, wait: bool = True, timeout: float = 30.0) -> Database:
        if self._owned:
            self.pool.open(wait=wait, timeout=timeout)
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
            _reraise(exc)

    @contextmanager
    def transaction(self) -> Iterator[Connection[Any]]:
        """One transaction: COMMIT when the block ends normally, ROLLBACK when it raises.

        The connection goes back to the pool in every case, including an exception raised after COMMIT
        (the seed's leak), because the pool's own context manager owns the release.
        """
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.Error as exc:
            _reraise(exc)

    def call(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        """Run one statement (a stored function call) in its own transaction; rows as dicts."""
        with self.transaction() as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                cur.execute(sql.encode(), params)
            except psycopg.Error as exc:
                _reraise(exc)
            return cur.fetchall() if cur.description else []

    def call_one(self, sql: str, params: Any = None) -> dict[str, Any] | None:
        rows = self.call(sql, params)
        return rows[0] if rows else None
