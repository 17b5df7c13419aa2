"""Index builds: is an index valid, INVALID, absent, or still being built by a backend whose runner is gone?

A runner killed by SIGKILL closes its sockets, but its backend goes on with a CREATE INDEX CONCURRENTLY until
the build ends (a busy backend does not read its socket). Meanwhile the index is INVALID in pg_index, exactly
like one left by a failed build. Dropping it would wait for (or break) that build; rebuilding it would build it
twice. So before repairing an INVALID index the runner looks for a backend building it
(pg_stat_progress_create_index, or a sigledger-migrate session whose query names the index) and waits for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from sigledger.core.errors import MigrationError
from sigledger.migrate.settings import Log

Conn = psycopg.Connection[Any]


def index_schema(conn: Conn, name: str) -> str | None:
    row = conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = %s AND c.relkind = 'i' AND n.nspname = ANY (current_schemas(false))",
        (name,),
    ).fetchone()
    return row[0] if row else None


def index_state(conn: Conn, schema: str | None, name: str) -> bool | None:
    """True valid, False INVALID (pg_index.indisvalid), None absent."""
    row = conn.execute(
        """SELECT i.indisvalid AND i.indisready FROM pg_class c
             JOIN pg_index i ON i.indexrelid = c.oid
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relname = %s AND (n.nspname = %s OR (%s::text IS NULL AND n.nspname = ANY (current_schemas(false))))
            LIMIT 1""",
        (name, schema, schema),
    ).fetchone()
    return None if row is None else bool(row[0])


@dataclass(frozen=True)
class Builder:
    pid: int
    application: str
    since: Any
    phase: str

    def describe(self) -> str:
        since = f"{self.since:%Y-%m-%d %H:%M:%S%z}" if self.since else "?"
        return (
            f"pid {self.pid} (application '{self.application}', running since {since}, phase: {self.phase})"
        )


def builders(conn: Conn, schema: str | None, name: str) -> list[Builder]:
    """Other backends building index `name` right now."""
    rows = conn.execute(
        """WITH idx AS (
               SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relname = %(name)s
                  AND (n.nspname = %(schema)s OR (%(schema)s::text IS NULL AND n.nspname = ANY (current_schemas(false)))))
           SELECT a.pid, a.application_name, a.query_start, coalesce(p.phase, a.wait_event, a.state)
             FROM pg_stat_activity a
             LEFT JOIN pg_stat_progress_create_index p ON p.pid = a.pid
            WHERE a.pid <> pg_backend_pid() AND a.state = 'active'
              AND (p.index_relid IN (SELECT oid FROM idx)
                   OR (a.application_name LIKE 'sigledger-migrate%%' AND a.query ILIKE '%%index%%concurrently%%'
                       AND a.query ~* ('\\m' || %(name)s || '\\M')))
            ORDER BY a.pid""",
        {"name": name, "schema": schema},
    ).fetchall()
    return [Builder(int(r[0]), r[1] or "", r[2], str(r[3])) for r in rows]


def wait_for_orphaned_build(conn: Conn, schema: str | None, name: str, timeout: float, log: Log) -> None:
    """If another backend is building `name` (a killed runner's), wait until it ends; its result is then kept
    when valid and rebuilt when not, like any other."""
    found = builders(conn, schema, name)
    if not found:
        return
    log(
        f"  index {name} is being built by {found[0].describe()}: an earlier runner's backend that outlived it; "
        "waiting for that build to end instead of dropping it"
    )
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + 30
    while found:
        if time.monotonic() >= deadline:
            raise MigrationError(
                f"index {name} is still being built by {found[0].describe()} after {timeout:.0f}s; "
                f"wait for it, or cancel it with SELECT pg_cancel_backend({found[0].pid}) and re-run"
            )
        if time.monotonic() >= next_note:
            log(f"  still waiting for the build of {name} by pid {found[0].pid} ({found[0].phase})")
            next_note = time.monotonic() + 30
        time.sleep(0.5)
        found = builders(conn, schema, name)
    log(f"  the earlier build of {name} ended")
