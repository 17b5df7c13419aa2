"""Options shared by command groups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

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
    from sigledger.core.db import default_dsn

    found = default_dsn()
    if not found:
        raise click.UsageError("no database: pass --dsn, set SIGLEDGER_DSN, or run `sigledger db up`")
    return found
