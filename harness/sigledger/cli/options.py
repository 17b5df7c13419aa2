"""Options shared by command groups, and how a command connects.

An unreachable database is the library's ``Unavailable`` (from ``Database.open()`` or ``connect()``), raised
within the connect timeout (5 s, or libpq's connect_timeout in the DSN / PGCONNECT_TIMEOUT) and naming host,
port and cause; the main group prints it as one line and exits 69."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from sigledger.core.db import Database, default_dsn
from sigledger.core.dsn import dsn_connect_timeout

F = TypeVar("F", bound=Callable[..., Any])


def dsn_option(func: F) -> F:
    return click.option(
        "--dsn",
        envvar="SIGLEDGER_DSN",
        default=None,
        show_envvar=True,
        help="libpq connection string; default: the local cluster of `sigledger db up`.",
    )(func)


def resolve_dsn(dsn: str | None) -> str:
    if dsn:
        return dsn
    found = default_dsn()
    if not found:
        raise click.UsageError("no database: pass --dsn, set SIGLEDGER_DSN, or run `sigledger db up`")
    return found


def open_database(dsn: str | None, application_name: str, *, max_size: int = 2) -> Database:
    """An opened pool for a command (Unavailable within the connect timeout when the server cannot be reached:
    seconds and one line, not the pool's retries and warnings)."""
    resolved = resolve_dsn(dsn)
    return Database(
        resolved,
        min_size=1,
        max_size=max_size,
        application_name=application_name,
        timeout=max(10.0, dsn_connect_timeout(resolved)),
    ).open()
