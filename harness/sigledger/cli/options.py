"""Options shared by command groups, and how a command connects."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict

from sigledger.core.db import Database
from sigledger.core.errors import Unavailable

F = TypeVar("F", bound=Callable[..., Any])

#: seconds a command waits for the database before it gives up (exit 69), unless the DSN's connect_timeout
#: or PGCONNECT_TIMEOUT says otherwise (libpq's own settings)
DEFAULT_CONNECT_TIMEOUT = 5


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
    from sigledger.core.db import default_dsn

    found = default_dsn()
    if not found:
        raise click.UsageError("no database: pass --dsn, set SIGLEDGER_DSN, or run `sigledger db up`")
    return found


def connect_timeout(dsn: str) -> int:
    try:
        given = conninfo_to_dict(dsn).get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT")
        return max(1, int(given)) if given else DEFAULT_CONNECT_TIMEOUT
    except (psycopg.ProgrammingError, ValueError):
        return DEFAULT_CONNECT_TIMEOUT


def target(dsn: str) -> str:
    """host:port of a DSN for messages (libpq's defaults when it names none)."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "?"
    host = info.get("host") or os.environ.get("PGHOST") or "localhost (socket)"
    port = info.get("port") or os.environ.get("PGPORT") or "5432"
    return f"{host}:{port}"


def probe(dsn: str) -> None:
    """One direct connection attempt, bounded by the connect timeout: Unavailable naming host, port and cause.

    Commands probe before opening their pool, so an unreachable database costs seconds and one line, not the
    pool's retries and warnings."""
    try:
        psycopg.connect(
            dsn, connect_timeout=connect_timeout(dsn), application_name="sigledger-cli-probe"
        ).close()
    except psycopg.OperationalError as exc:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise Unavailable(f"cannot connect to {target(dsn)}: {cause}") from None


def open_database(dsn: str | None, application_name: str, *, max_size: int = 2) -> Database:
    """An opened pool for a command (probe first, see `probe`)."""
    resolved = resolve_dsn(dsn)
    probe(resolved)
    return Database(
        resolved,
        min_size=1,
        max_size=max_size,
        application_name=application_name,
        timeout=max(10, connect_timeout(resolved)),
    ).open()
