"""The runner's own bookkeeping: the sigledger_meta schema, what it says was applied, and the status derived
from comparing it with the files."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from sigledger.core.errors import MigrationError
from sigledger.migrate.files import Migration, Repeatable, version_key
from sigledger.migrate.settings import OWNER_ROLE

META_SCHEMA = "sigledger_meta"

EXIT_OK = 0
EXIT_PENDING = 3
EXIT_DRIFT = 4

# The runner's tables, created by (and owned by) sigledger_owner so that any member of it can run every command.
# The schema itself is created by the connecting login (it needs CREATE on the database; the owner role has
# none) with AUTHORIZATION sigledger_owner (history.ensure_meta).
META_TABLES = f"""
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
-- What each data repair (sql/repairs) did, one row per rule and run.
CREATE TABLE IF NOT EXISTS {META_SCHEMA}.repair_history (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repair         text NOT NULL,
    before_version text NOT NULL,
    rule           text NOT NULL,
    action         text NOT NULL CHECK (action IN ('repaired', 'quarantined')),
    rows           bigint NOT NULL,
    detail         text,
    applied_by     text NOT NULL DEFAULT session_user,
    applied_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Rows a repair moved aside instead of changing them, whole, with the rule and the reason: nothing is dropped.
CREATE TABLE IF NOT EXISTS {META_SCHEMA}.quarantine (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_table  text NOT NULL,
    rule          text NOT NULL,
    reason        text NOT NULL,
    row_data      jsonb NOT NULL,
    moved_by      text NOT NULL DEFAULT session_user,
    moved_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

Conn = psycopg.Connection[Any]


def ensure_meta(conn: Conn) -> None:
    """Create the runner's schema and tables when missing: the schema by this login (CREATE on the database)
    with AUTHORIZATION sigledger_owner, the tables as sigledger_owner, so every member of it can use them."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) AND pg_has_role(current_user, %s, 'MEMBER'), "
        "to_regnamespace(%s) IS NULL",
        (OWNER_ROLE, OWNER_ROLE, META_SCHEMA),
    ).fetchone()
    assert row is not None
    as_owner, missing = bool(row[0]), bool(row[1])
    if missing:
        conn.execute(
            f"CREATE SCHEMA IF NOT EXISTS {META_SCHEMA}"
            + (f" AUTHORIZATION {OWNER_ROLE}" if as_owner else "")
        )
    with conn.transaction():
        owned = conn.execute(
            "SELECT nspowner = (SELECT oid FROM pg_roles WHERE rolname = %s) FROM pg_namespace WHERE nspname = %s",
            (OWNER_ROLE, META_SCHEMA),
        ).fetchone()
        if as_owner and owned and owned[0]:
            conn.execute(f"SET LOCAL ROLE {OWNER_ROLE}")
        conn.execute(META_TABLES)


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
    # Applied from an earlier released content of a file that was rewritten since (its header lists the
    # checksum): not drift.
    superseded: list[str] = field(default_factory=list)
    # The runner holding the lock right now (pid, application, client, since), if any: a partially applied
    # file is then being applied, not abandoned.
    runner: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        abandoned = self.in_progress if self.runner is None else []
        if self.drifted or self.unknown or abandoned or self.out_of_order:
            return EXIT_DRIFT
        if self.pending or self.repeatables_pending or self.in_progress:
            return EXIT_PENDING
        return EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code}


def status_json(status: Status) -> str:
    return json.dumps(status.as_dict(), indent=2)


def meta_exists(conn: Conn) -> bool:
    # (to_regclass itself needs USAGE on the schema: look the table up in the catalog)
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = 'schema_history'",
        (META_SCHEMA,),
    ).fetchone()
    if row is None:
        return False
    readable = conn.execute(
        "SELECT has_schema_privilege(%s, 'USAGE') AND has_table_privilege(%s::oid, 'SELECT')",
        (META_SCHEMA, row[0]),
    ).fetchone()
    if not (readable and readable[0]):
        # an earlier release left the runner's schema to the login that first ran it
        from sigledger.migrate.ownership import foreign_objects, refusal

        foreign = foreign_objects(conn, META_SCHEMA)
        raise MigrationError(
            f"this login cannot read {META_SCHEMA}: "
            + (refusal(foreign, META_SCHEMA) if foreign else "it lacks USAGE/SELECT there")
            + f"\n(or run `sigledger migrate up` once as {', '.join(sorted({o.owner for o in foreign})) or 'its owner'}: "
            "it hands them to sigledger_owner)"
        )
    return True


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


def compute_status(
    conn: Conn,
    migrations: list[Migration],
    repeatables: list[Repeatable],
    runner: dict[str, Any] | None = None,
) -> Status:
    applied = applied_rows(conn)
    known = {m.version: m for m in migrations}
    by_canonical = {version_key(v): v for v in known}
    status = Status(current=None, head=migrations[-1].version if migrations else None, runner=runner)
    for version, row in applied.items():
        local = by_canonical.get(version_key(version))
        if local is None:
            status.unknown.append(f"V{version}__{row.name}")
            continue
        migration = known[local]
        if row.kind != "baseline" and row.checksum != migration.up.checksum:
            # an earlier release's content is accepted once applied, not while partially applied: the
            # recorded progress counts statements of that content
            if row.checksum in migration.up.supersedes and row.status == "applied":
                status.superseded.append(migration.label)
            else:
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


def listing(conn: Conn, migrations: list[Migration]) -> list[dict[str, Any]]:
    """Every history row, oldest first: what ran, by whom, when, how long, at which checksum (and whether
    that checksum is the file's current content, an earlier released one, or neither)."""
    if not meta_exists(conn):
        return []
    files = {version_key(m.version): m for m in migrations}
    out: list[dict[str, Any]] = []
    for row in conn.execute(
        f"SELECT version, name, kind, status, applied_by, applied_at, duration_ms, checksum, client_host, "
        f"progress, statements, last_error FROM {META_SCHEMA}.schema_history ORDER BY version_key"
    ).fetchall():
        version, name, kind, status, by, at, duration, digest, host, progress, statements, error = row
        file = files.get(version_key(version))
        if file is None:
            matches = "unknown to this code"
        elif digest == file.up.checksum:
            matches = "current"
        elif digest in file.up.supersedes:
            matches = "earlier release"
        else:
            matches = "baseline" if kind == "baseline" else "DRIFTED"
        out.append(
            {
                "version": f"V{version}",
                "name": name,
                "kind": kind,
                "status": status if status == "applied" else f"{status} ({progress}/{statements})",
                "applied_by": by,
                "client_host": host,
                "applied_at": at.isoformat(),
                "duration_ms": duration,
                "checksum": digest,
                "file": matches,
                "last_error": error,
            }
        )
    if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{META_SCHEMA}.repair_history",)).fetchone() == (
        True,
    ):
        for repair, before, rule, action, rows, by, at in conn.execute(
            f"SELECT repair, before_version, rule, action, rows, applied_by, applied_at "
            f"FROM {META_SCHEMA}.repair_history ORDER BY id"
        ).fetchall():
            out.append(
                {
                    "version": "repair",
                    "name": repair,
                    "kind": "repair",
                    "status": f"{action} {rows}",
                    "applied_by": by,
                    "client_host": None,
                    "applied_at": at.isoformat(),
                    "duration_ms": None,
                    "checksum": "",
                    "file": f"before {before}: {rule}",
                    "last_error": None,
                }
            )
    for name, digest, by, at in conn.execute(
        f"SELECT name, checksum, applied_by, applied_at FROM {META_SCHEMA}.repeatable_history ORDER BY name"
    ).fetchall():
        out.append(
            {
                "version": "repeatable",
                "name": name,
                "kind": "repeatable",
                "status": "applied",
                "applied_by": by,
                "client_host": None,
                "applied_at": at.isoformat(),
                "duration_ms": None,
                "checksum": digest,
                "file": "",
                "last_error": None,
            }
        )
    return out


def refuse_unsafe(status: Status) -> None:
    if status.unknown:
        raise MigrationError(
            "the database is ahead of this code: it has applied "
            + ", ".join(status.unknown)
            + " which this release does not know; deploy the newer release instead"
        )
    if status.drifted:
        raise MigrationError(
            "applied migration files were changed since they ran: "
            + ", ".join(status.drifted)
            + "; restore them and put the change in a new migration"
        )


def refuse_out_of_order(status: Status, allowed: bool) -> None:
    if status.out_of_order and not allowed:
        raise MigrationError(
            "pending migrations are numbered below the newest applied version V"
            + (status.current or "?")
            + ": "
            + ", ".join(status.out_of_order)
            + "; renumber them above it, or run with --allow-out-of-order if applying them late is safe"
        )
