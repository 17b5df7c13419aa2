"""What the sync and the async Database share: the default DSN, naming the server a DSN points at and how long
to wait for it, error translation on the way out, server notices to logging, and a bounded reconnection backoff
for the pool."""

from __future__ import annotations

import logging
import os
from typing import NoReturn

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool.base import AttemptWithBackoff

from sigledger.core.errors import translate

log = logging.getLogger("sigledger.db")

DEFAULT_APPLICATION_NAME = "sigledger"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_RECONNECT_DELAY = 0.5


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


def target(dsn: str) -> tuple[str, str]:
    """(host, port) that a connection with this DSN goes to, libpq's environment and defaults included."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        params = {}
    host = str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "the local socket")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    return host, port


def dsn_connect_timeout(dsn: str) -> float:
    """Seconds to wait for the server when the caller names none: libpq's own settings (the DSN's
    ``connect_timeout``, else ``PGCONNECT_TIMEOUT``), else DEFAULT_CONNECT_TIMEOUT (5)."""
    try:
        given = conninfo_to_dict(dsn).get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT")
        return max(1.0, float(given)) if given else DEFAULT_CONNECT_TIMEOUT
    except (psycopg.Error, ValueError):
        return DEFAULT_CONNECT_TIMEOUT


def reraise(exc: psycopg.Error) -> NoReturn:
    """Raise the sigledger exception for ``exc``; an error without one is re-raised as it is."""
    translated = translate(exc)
    if translated is exc:
        raise exc
    raise translated from exc


def log_notice(diag: psycopg.errors.Diagnostic) -> None:
    level = {"WARNING": logging.WARNING, "NOTICE": logging.INFO, "INFO": logging.INFO}.get(
        diag.severity_nonlocalized or "", logging.DEBUG
    )
    log.log(level, "server %s: %s", diag.severity, diag.message_primary)


class BoundedAttempt(AttemptWithBackoff):
    """psycopg_pool's reconnection backoff doubles without bound up to its reconnect_timeout (1, 2, 4, 8 s ...):
    after an outage of a few seconds the pool would not try again for 8 s or more although the server is back,
    and every call meanwhile fails its pool timeout (issue 14: 73 of 74 fail-closed refusals came after the
    server was back). Capped, the first attempt after the server's return comes within ``max_delay``."""

    INITIAL_DELAY = 0.1

    def __init__(self, *, timeout: float, max_delay: float) -> None:
        super().__init__(timeout=timeout)
        self.max_delay = max_delay

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, self.max_delay)
