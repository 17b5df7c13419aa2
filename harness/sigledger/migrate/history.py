"""The runner's own bookkeeping: the sigledger_meta schema, what it says was applied, and the status derived
from comparing it with the files."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from sigledger.migrate.files import Migration, Repeatable, version_key

META_SCHEMA = "sigledger_meta"

EXIT_OK = 0
EXIT_PENDING = 3
EXIT_DRIFT = 4

META_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {META_SCHEMA};
CREATE TABLE IF NOT EXISTS {META_SCHEMA}.schema_history (
    version        text PRIMARY KEY,
    version_key    int[] NOT NULL,
    name           text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('versioned', 'baseline')),
    checksum       text NOT NULL,
    transactional  boolean NOT NULL,
    status         text NOT NULL CHECK (status IN ('applied', 'in_progress')),
    statements     int NOT NULL,
    progress       int NOT NULL DEFAULT 0,
    last_error     text,
    duration_ms    bigint,
    applied_by     text NOT NULL DEFAULT session_user,
    client_host    text,
    applied_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS {META_SCHEMA}.repeatable_history (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_by  text NOT NULL DEFAULT session_user,
    client_host text,
    applied_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

Conn = psycopg.Connection[Any]


@dataclass
class Applied:
    version: str
    name: str
    checksum: str
    status: str
    progress: int
    statements: int
    kind: str
    transactional: bool


@dataclass
class Status:
    current: str | None
    head: str | None
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    drifted: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    repeatables_pending: list[str] = field(default_factory=list)
    # Pending files numbered below the newest applied version (a late merge of an old branch, a renamed file).
    out_of_order: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.drifted or self.unknown or self.in_progress or self.out_of_order:
            return EXIT_DRIFT
        if self.pending or self.repeatables_pending:
            return EXIT_PENDING
        return EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code}


def status_json(status: Status) -> str:
    return json.dumps(status.as_dict(), indent=2)


def meta_exists(conn: Conn) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{META_SCHEMA}.schema_history",)).fetchone()
    return bool(row and row[0])


def applied_rows(conn: Conn) -> dict[str, Applied]:
    if not meta_exists(conn):
        return {}
    rows = conn.execute(
        f"SELECT version, name, checksum, status, progress, statements, kind, transactional "
        f"FROM {META_SCHEMA}.schema_history ORDER BY version_key"
    ).fetchall()
    return {r[0]: Applied(*r) for r in rows}


def repeatable_checksums(conn: Conn) -> dict[str, str]:
    if not meta_exists(conn):
        return {}
    return dict(conn.execute(f"SELECT name, checksum FROM {META_SCHEMA}.repeatable_history").fetchall())


def compute_status(conn: Conn, migrations: list[Migration], repeatables: list[Repeatable]) -> Status:
    applied = applied_rows(conn)
    known = {m.version: m for m in migrations}
    by_canonical = {version_key(v): v for v in known}
    status = Status(current=None, head=migrations[-1].version if migrations else None)
    for version, row in applied.items():
        local = by_canonical.get(version_key(version))
        if local is None:
            status.unknown.append(f"V{version}__{row.name}")
            continue
        migration = known[local]
        if row.kind != "baseline" and row.checksum != migration.up.checksum:
            status.drifted.append(migration.label)
        if row.status == "in_progress":
            status.in_progress.append(migration.label)
        else:
            status.applied.append(migration.label)
            status.current = migration.version
    applied_keys = {version_key(v) for v in applied}
    status.pending = [m.label for m in migrations if m.key not in applied_keys]
    newest = max(applied_keys, default=None)
    status.out_of_order = [
        m.label for m in migrations if m.key not in applied_keys and newest is not None and m.key < newest
    ]
    done = repeatable_checksums(conn)
    status.repeatables_pending = [r.name for r in repeatables if done.get(r.name) != r.file.checksum]
    return status


def insert_row(
    conn: Conn, migration: Migration, *, kind: str, status: str, statements: int, progress: int
) -> None:
    """One history row; for a transactional migration it is written inside the migration's own transaction,
    so it commits or vanishes with it."""
    conn.execute(
        f"INSERT INTO {META_SCHEMA}.schema_history (version, version_key, name, kind, checksum, "
        "transactional, status, statements, progress, client_host) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            migration.version,
            list(migration.key),
            migration.name,
            kind,
            migration.up.checksum,
            migration.up.transactional,
            status,
            statements,
            progress,
            socket.gethostname(),
        ),
    )


def record_repeatable(conn: Conn, rep: Repeatable) -> None:
    conn.execute(
        f"INSERT INTO {META_SCHEMA}.repeatable_history (name, checksum, client_host) "
        "VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, "
        "applied_by = session_user, client_host = EXCLUDED.client_host, applied_at = clock_timestamp()",
        (rep.name, rep.file.checksum, socket.gethostname()),
    )


def delete_row(conn: Conn, version: str) -> None:
    conn.execute(f"DELETE FROM {META_SCHEMA}.schema_history WHERE version = %s", (version,))
