"""The migration runner (no sqitch): versioned files once and in order, repeatable function files on change.

What a DBA gets, and why:
- content checksums (line endings normalised); an applied file that changed is refused by name;
- the history row is written in the migration's own transaction, so a failed migration leaves no row;
- `-- sigledger:no-transaction` files run statement by statement with their progress recorded, and a re-run
  resumes at the statement that failed; a statement that cannot run in a transaction inside a normal file is
  refused before anything runs;
- CREATE INDEX CONCURRENTLY: a valid index of that name is kept, an INVALID one (a failed build; pg_indexes
  still lists it, only pg_index.indisvalid tells) is dropped concurrently and rebuilt, and the result must be
  valid;
- one runner at a time through pg_try_advisory_lock polled with backoff on a connection of its own (a
  blocking advisory lock waits inside a transaction, which a concurrent index build then waits for: deadlock);
- lock_timeout on DDL with retries and backoff, so a migration never queues in front of a busy table's traffic
  for long;
- refusal when the database holds versions this code does not know (it is ahead of the code).
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from harness.db import connect
from harness.errors import MigrationError
from harness.paths import functions_dir, migrations_dir
from harness.sqlfiles import (
    Migration,
    Repeatable,
    SqlFile,
    Statement,
    discover_migrations,
    discover_repeatables,
    version_key,
)

ADVISORY_LOCK_KEY = 0x5349474C4D494752  # "SIGLMIGR": one migration runner per database
META_SCHEMA = "sigledger_meta"
OWNER_ROLE = "sigledger_owner"

EXIT_OK = 0
EXIT_PENDING = 3
EXIT_DRIFT = 4

_META_DDL = f"""
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


@dataclass
class Settings:
    lock_timeout: str = "5s"  # DDL waits at most this long for a table lock, then retries
    statement_timeout: str = "30min"
    concurrent_lock_timeout: str = "10min"  # CREATE INDEX CONCURRENTLY waits out old transactions
    concurrent_statement_timeout: str = "0"
    retries: int = 5
    retry_base_delay: float = 0.5
    runner_wait: float = 600.0  # how long to wait for another runner holding the advisory lock
    allow_out_of_order: bool = False  # apply a pending file numbered below the newest applied one
    application_name: str = "sigledger-migrate"


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


Log = Callable[[str], None]


class Migrator:
    def __init__(
        self,
        dsn: str,
        *,
        migrations: Path | None = None,
        functions: Path | None = None,
        settings: Settings | None = None,
        log: Log | None = None,
    ) -> None:
        self.dsn = dsn
        self.migrations_path = migrations or migrations_dir()
        self.functions_path = functions or functions_dir()
        self.settings = settings or Settings()
        self.log: Log = log or (lambda _msg: None)

    # ---- discovery and state ------------------------------------------------------------------------------

    def migrations(self) -> list[Migration]:
        return discover_migrations(self.migrations_path)

    def repeatables(self) -> list[Repeatable]:
        return discover_repeatables(self.functions_path) if self.functions_path.is_dir() else []

    def _connect(self) -> psycopg.Connection[Any]:
        return connect(self.dsn, application_name=self.settings.application_name, autocommit=True)

    @staticmethod
    def _meta_exists(conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{META_SCHEMA}.schema_history",)
        ).fetchone()
        return bool(row and row[0])

    def _applied(self, conn: psycopg.Connection[Any]) -> dict[str, Applied]:
        if not self._meta_exists(conn):
            return {}
        rows = conn.execute(
            f"SELECT version, name, checksum, status, progress, statements, kind, transactional "
            f"FROM {META_SCHEMA}.schema_history ORDER BY version_key"
        ).fetchall()
        return {r[0]: Applied(*r) for r in rows}

    def _repeatable_checksums(self, conn: psycopg.Connection[Any]) -> dict[str, str]:
        if not self._meta_exists(conn):
            return {}
        return dict(conn.execute(f"SELECT name, checksum FROM {META_SCHEMA}.repeatable_history").fetchall())

    def _status(self, conn: psycopg.Connection[Any]) -> Status:
        migrations = self.migrations()
        applied = self._applied(conn)
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
        done = self._repeatable_checksums(conn)
        status.repeatables_pending = [
            r.name for r in self.repeatables() if done.get(r.name) != r.file.checksum
        ]
        return status

    def status(self) -> Status:
        with self._connect() as conn:
            return self._status(conn)

    def plan(self, to: str | None = None) -> list[str]:
        """What `up` would run, in order; nothing is changed."""
        with self._connect() as conn:
            status = self._status(conn)
            self._refuse_unsafe(status)
            self._refuse_out_of_order(status)
            steps = []
            pending = self._pending(conn, to)
            applied = {version_key(v): row for v, row in self._applied(conn).items()}
            for migration in pending:
                migration.up.check_statements()
                mode = "transactional" if migration.up.transactional else "non-transactional"
                count = len(migration.up.statements)
                previous = applied.get(migration.key)
                if previous is not None and previous.status == "in_progress":
                    steps.append(
                        f"{migration.label} ({mode}, resumes at statement {previous.progress + 1} of {count})"
                    )
                else:
                    steps.append(f"{migration.label} ({mode}, {count} statements)")
            if self._reaches_head(to):
                for rep in self._repeatables_to_apply(conn, bool(pending)):
                    rep.file.check_statements(transactional=True)
                    steps.append(f"repeatable {rep.name}")
            return steps

    # ---- locking ------------------------------------------------------------------------------------------

    @contextmanager
    def _runner_lock(self) -> Iterator[None]:
        """Hold the runner's advisory lock on a connection of its own for the whole run."""
        lock_conn = self._connect()
        try:
            deadline = time.monotonic() + self.settings.runner_wait
            delay = 0.05
            while True:
                row = lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()
                if row and row[0]:
                    break
                if time.monotonic() >= deadline:
                    raise MigrationError(
                        f"another migration runner holds the lock: {self._lock_holder(lock_conn)}"
                    )
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 2.0)
            try:
                yield
            finally:
                with suppress(psycopg.Error):
                    lock_conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
        finally:
            lock_conn.close()

    @staticmethod
    def _lock_holder(conn: psycopg.Connection[Any]) -> str:
        row = conn.execute(
            """SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start, a.state
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                      SELECT oid FROM pg_database WHERE datname = current_database())
                  AND l.classid = (%s::bigint >> 32)::oid AND l.objid = (%s::bigint & 4294967295)::oid""",
            (ADVISORY_LOCK_KEY, ADVISORY_LOCK_KEY),
        ).fetchone()
        if not row:
            return "holder not visible (it may have just finished)"
        return f"pid {row[0]}, application '{row[1]}', client {row[2] or 'local'}, since {row[3]:%Y-%m-%d %H:%M:%S%z}"

    # ---- up -----------------------------------------------------------------------------------------------

    def _refuse_unsafe(self, status: Status) -> None:
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

    def _refuse_out_of_order(self, status: Status) -> None:
        if status.out_of_order and not self.settings.allow_out_of_order:
            raise MigrationError(
                "pending migrations are numbered below the newest applied version V"
                + (status.current or "?")
                + ": "
                + ", ".join(status.out_of_order)
                + "; renumber them above it, or run with --allow-out-of-order if applying them late is safe"
            )

    def _pending(self, conn: psycopg.Connection[Any], to: str | None) -> list[Migration]:
        applied = self._applied(conn)
        done = {version_key(v) for v, row in applied.items() if row.status == "applied"}
        limit = version_key(to.lstrip("Vv")) if to else None
        if limit is not None and limit not in {m.key for m in self.migrations()}:
            raise MigrationError(f"--to V{to.lstrip('Vv') if to else ''}: no such migration")
        return [m for m in self.migrations() if m.key not in done and (limit is None or m.key <= limit)]

    def _reaches_head(self, to: str | None) -> bool:
        migrations = self.migrations()
        return to is None or not migrations or version_key(to.lstrip("Vv")) >= migrations[-1].key

    def _repeatables_to_apply(self, conn: psycopg.Connection[Any], migrated: bool) -> list[Repeatable]:
        """The changed (or new) repeatable files, in file-name order, plus every `always` file when anything
        is applied at all. An edited `always` file is a change of its own."""
        done = self._repeatable_checksums(conn)
        changed = [r for r in self.repeatables() if done.get(r.name) != r.file.checksum]
        if not changed and not migrated:
            return []
        return [r for r in self.repeatables() if r in changed or r.always]

    def up(self, to: str | None = None) -> list[str]:
        ran: list[str] = []
        with self._connect() as conn, self._runner_lock():
            status = self._status(conn)
            self._refuse_unsafe(status)
            self._refuse_out_of_order(status)
            pending = self._pending(conn, to)
            reps = self._repeatables_to_apply(conn, bool(pending)) if self._reaches_head(to) else []
            # Everything is checked before anything runs (the history schema included): a refused file
            # leaves the database exactly as it was, and no earlier pending file is applied either.
            for migration in pending:
                migration.up.check_statements()
            for rep in reps:
                rep.file.check_statements(transactional=True)  # repeatables run in one transaction
            conn.execute(_META_DDL)
            # By version key: V3_8 and V3_008 are one version (a renamed file resumes its own row).
            applied = {version_key(v): row for v, row in self._applied(conn).items()}
            for migration in pending:
                if migration.up.transactional:
                    self._apply_transactional(conn, migration)
                else:
                    self._apply_statementwise(conn, migration, applied.get(migration.key))
                ran.append(migration.label)
            if reps:
                self._apply_repeatables(conn, reps)
                ran.extend(f"repeatable {r.name}" for r in reps)
        return ran

    def _owner_role_usable(self, conn: psycopg.Connection[Any]) -> bool:
        """Objects are created as the owner role once the schema exists (the baseline bootstraps both)."""
        row = conn.execute(
            "SELECT to_regnamespace('sigledger') IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) "
            "AND pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = %s), 'MEMBER')",
            (OWNER_ROLE, OWNER_ROLE),
        ).fetchone()
        return bool(row and row[0])

    def _session_settings(
        self,
        conn: psycopg.Connection[Any],
        *,
        local: bool,
        lock_timeout: str,
        statement_timeout: str,
        as_owner: bool = True,
    ) -> None:
        scope = "LOCAL " if local else ""
        conn.execute(f"SET {scope}search_path TO sigledger, public")
        conn.execute(sql.SQL("SET {}lock_timeout = {}").format(sql.SQL(scope), sql.Literal(lock_timeout)))
        conn.execute(
            sql.SQL("SET {}statement_timeout = {}").format(sql.SQL(scope), sql.Literal(statement_timeout))
        )
        if as_owner and self._owner_role_usable(conn):
            conn.execute(sql.SQL("SET {}ROLE {}").format(sql.SQL(scope), sql.Identifier(OWNER_ROLE)))

    def _with_lock_retries(self, what: str, action: Callable[[], None]) -> None:
        """Retry an action that failed on lock_timeout (55P03) with exponential backoff and jitter."""
        attempt = 0
        while True:
            try:
                action()
                return
            except psycopg.errors.LockNotAvailable as exc:
                attempt += 1
                if attempt > self.settings.retries:
                    raise MigrationError(f"{what}: gave up after {attempt} lock timeouts: {exc}") from exc
                delay = self.settings.retry_base_delay * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                self.log(f"{what}: lock timeout, retry {attempt}/{self.settings.retries} in {delay:.1f}s")
                time.sleep(delay)

    def _apply_transactional(self, conn: psycopg.Connection[Any], migration: Migration) -> None:
        up = migration.up

        def run() -> None:
            started = time.monotonic()
            with conn.transaction():
                # History row first, in the migration's own transaction: it commits or vanishes with it.
                conn.execute(
                    f"INSERT INTO {META_SCHEMA}.schema_history (version, version_key, name, kind, checksum, "
                    "transactional, status, statements, progress, client_host) "
                    "VALUES (%s, %s, %s, 'versioned', %s, true, 'applied', %s, %s, %s)",
                    (
                        migration.version,
                        list(migration.key),
                        migration.name,
                        up.checksum,
                        len(up.statements),
                        len(up.statements),
                        socket.gethostname(),
                    ),
                )
                self._session_settings(
                    conn,
                    local=True,
                    lock_timeout=self.settings.lock_timeout,
                    statement_timeout=self.settings.statement_timeout,
                    as_owner=up.as_owner,
                )
                for stmt in up.statements:
                    self._execute(conn, stmt, migration.label)
                conn.execute("RESET ROLE")
                conn.execute(
                    f"UPDATE {META_SCHEMA}.schema_history SET duration_ms = %s WHERE version = %s",
                    (int((time.monotonic() - started) * 1000), migration.version),
                )

        self.log(f"applying {migration.label}")
        self._with_lock_retries(migration.label, run)

    def _execute(self, conn: psycopg.Connection[Any], stmt: Statement, label: str) -> None:
        try:
            conn.execute(stmt.sql.encode("utf-8"))
        except psycopg.errors.LockNotAvailable:
            raise
        except psycopg.Error as exc:
            raise MigrationError(
                f"{label}:{stmt.line}: {exc.sqlstate}: {str(exc).strip()}", sqlstate=exc.sqlstate
            ) from exc

    def _apply_statementwise(
        self, conn: psycopg.Connection[Any], migration: Migration, previous: Applied | None
    ) -> None:
        up = migration.up
        started = time.monotonic()
        if previous is None:
            conn.execute(
                f"INSERT INTO {META_SCHEMA}.schema_history (version, version_key, name, kind, checksum, "
                "transactional, status, statements, progress, client_host) "
                "VALUES (%s, %s, %s, 'versioned', %s, false, 'in_progress', %s, 0, %s)",
                (
                    migration.version,
                    list(migration.key),
                    migration.name,
                    up.checksum,
                    len(up.statements),
                    socket.gethostname(),
                ),
            )
            row_version = migration.version
            start_at = 0
        else:
            row_version = previous.version
            start_at = previous.progress
            self.log(f"resuming {migration.label} at statement {start_at + 1} of {len(up.statements)}")
        self.log(f"applying {migration.label} (non-transactional)")
        for index in range(start_at, len(up.statements)):
            stmt = up.statements[index]
            try:
                self._with_lock_retries(
                    f"{migration.label}:{stmt.line}", partial(self._run_one, conn, stmt, migration)
                )
            except MigrationError as exc:
                with suppress(psycopg.Error):
                    conn.execute("RESET ROLE")
                    conn.execute(
                        f"UPDATE {META_SCHEMA}.schema_history SET last_error = %s WHERE version = %s",
                        (str(exc), row_version),
                    )
                raise
            conn.execute(
                f"UPDATE {META_SCHEMA}.schema_history SET progress = %s, last_error = NULL "
                "WHERE version = %s",
                (index + 1, row_version),
            )
        conn.execute(
            f"UPDATE {META_SCHEMA}.schema_history SET status = 'applied', duration_ms = %s, "
            "applied_at = clock_timestamp() WHERE version = %s",
            (int((time.monotonic() - started) * 1000), row_version),
        )

    def _run_one(
        self,
        conn: psycopg.Connection[Any],
        stmt: Statement,
        migration: Migration,
        source: SqlFile | None = None,
    ) -> None:
        """Run one statement of a non-transactional file (`source`, default the migration's up file)."""
        source = source or migration.up
        concurrent = stmt.concurrent_index
        needs_long = stmt.needs_no_transaction
        self._session_settings(
            conn,
            local=False,
            lock_timeout=self.settings.concurrent_lock_timeout if needs_long else self.settings.lock_timeout,
            statement_timeout=(
                self.settings.concurrent_statement_timeout if needs_long else self.settings.statement_timeout
            ),
            as_owner=source.as_owner,
        )
        try:
            if concurrent is not None:
                schema, name = concurrent
                state = self._index_state(conn, schema, name)
                if state is True:
                    self.log(f"  index {name} exists and is valid: kept")
                    return
                if state is False:
                    self.log(
                        f"  index {name} is INVALID (a failed concurrent build): dropping and rebuilding"
                    )
                    conn.execute(
                        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                            sql.Identifier(
                                *(p for p in (schema or self._index_schema(conn, name), name) if p)
                            )
                        )
                    )
            self._execute(conn, stmt, migration.label)
            if concurrent is not None and self._index_state(conn, *concurrent) is not True:
                raise MigrationError(
                    f"{migration.label}:{stmt.line}: index {concurrent[1]} is not valid after build"
                )
        finally:
            with suppress(psycopg.Error):
                conn.execute("RESET ROLE")
                conn.execute("RESET lock_timeout")
                conn.execute("RESET statement_timeout")

    @staticmethod
    def _index_schema(conn: psycopg.Connection[Any], name: str) -> str | None:
        row = conn.execute(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND c.relkind = 'i' AND n.nspname = ANY (current_schemas(false))",
            (name,),
        ).fetchone()
        return row[0] if row else None

    @staticmethod
    def _index_state(conn: psycopg.Connection[Any], schema: str | None, name: str) -> bool | None:
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

    def _apply_repeatables(self, conn: psycopg.Connection[Any], reps: list[Repeatable]) -> None:
        def run() -> None:
            with conn.transaction():
                self._session_settings(
                    conn,
                    local=True,
                    lock_timeout=self.settings.lock_timeout,
                    statement_timeout=self.settings.statement_timeout,
                )
                for rep in reps:
                    self.log(f"applying repeatable {rep.name}")
                    for stmt in rep.file.statements:
                        self._execute(conn, stmt, rep.name)
                conn.execute("RESET ROLE")
                for rep in reps:
                    conn.execute(
                        f"INSERT INTO {META_SCHEMA}.repeatable_history (name, checksum, client_host) "
                        "VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, "
                        "applied_by = session_user, client_host = EXCLUDED.client_host, applied_at = clock_timestamp()",
                        (rep.name, rep.file.checksum, socket.gethostname()),
                    )

        self._with_lock_retries("repeatables", run)

    # ---- down, baseline, verify ---------------------------------------------------------------------------

    def down(self, to: str) -> list[str]:
        """Roll back every applied migration above version `to` (use `0` for everything), newest first."""
        target = version_key(to.lstrip("Vv"))
        ran: list[str] = []
        with self._connect() as conn, self._runner_lock():
            status = self._status(conn)
            self._refuse_unsafe(status)
            applied = self._applied(conn)
            by_version = {m.version: m for m in self.migrations()}
            victims = [by_version[v] for v in applied if version_key(v) > target]
            victims.sort(key=lambda m: m.key, reverse=True)
            missing = [m.label for m in victims if m.down is None]
            if missing:
                raise MigrationError("no down file for " + ", ".join(missing) + "; nothing was rolled back")
            for migration in victims:
                assert migration.down is not None
                migration.down.check_statements()
            if not victims:
                return ran
            conn.execute(_META_DDL)
            # Views come from repeatable files and depend on versioned tables: drop them all first (a down
            # file cannot know which views a later repeatable built on its tables), then rebuild every
            # repeatable if the rolled-back schema still supports it, else leave that to the next `up`.
            self._drop_views(conn)
            conn.execute(f"DELETE FROM {META_SCHEMA}.repeatable_history")
            try:
                for migration in victims:
                    assert migration.down is not None
                    self.log(f"rolling back {migration.label}")
                    self._run_down(conn, migration, migration.down)
                    ran.append(migration.label)
            finally:
                self._restore_repeatables(conn)
        return ran

    def _drop_views(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            self._session_settings(
                conn,
                local=True,
                lock_timeout=self.settings.lock_timeout,
                statement_timeout=self.settings.statement_timeout,
            )
            views = conn.execute(
                "SELECT c.oid::regclass::text, c.relkind FROM pg_class c "
                "WHERE c.relnamespace = to_regnamespace('sigledger') AND c.relkind IN ('v', 'm')"
            ).fetchall()
            for name, relkind in views:
                kind = "MATERIALIZED VIEW" if relkind == "m" else "VIEW"
                conn.execute(sql.SQL(f"DROP {kind} IF EXISTS {{}} CASCADE").format(sql.SQL(name)))
            conn.execute("RESET ROLE")

    def _restore_repeatables(self, conn: psycopg.Connection[Any]) -> None:
        reps = self.repeatables()
        if not reps:
            return
        try:
            self._apply_repeatables(conn, reps)
            self.log("re-applied the repeatable files on the rolled-back schema")
        except (MigrationError, psycopg.Error) as exc:
            self.log(f"repeatable files not re-applied ({exc}); the next `up` re-applies them")

    def _run_down(self, conn: psycopg.Connection[Any], migration: Migration, down: SqlFile) -> None:
        if down.transactional:

            def run() -> None:
                with conn.transaction():
                    self._session_settings(
                        conn,
                        local=True,
                        lock_timeout=self.settings.lock_timeout,
                        statement_timeout=self.settings.statement_timeout,
                        as_owner=down.as_owner,
                    )
                    for stmt in down.statements:
                        self._execute(conn, stmt, down.path.name)
                    conn.execute("RESET ROLE")
                    conn.execute(
                        f"DELETE FROM {META_SCHEMA}.schema_history WHERE version = %s", (migration.version,)
                    )

            self._with_lock_retries(down.path.name, run)
            return
        for stmt in down.statements:
            self._with_lock_retries(
                f"{down.path.name}:{stmt.line}", partial(self._run_one, conn, stmt, migration, down)
            )
        conn.execute(f"DELETE FROM {META_SCHEMA}.schema_history WHERE version = %s", (migration.version,))

    def baseline(self, version: str) -> list[str]:
        """Mark every migration up to `version` as applied without running it (an existing database)."""
        limit = version_key(version.lstrip("Vv"))
        marked: list[str] = []
        with self._connect() as conn, self._runner_lock():
            if limit not in {m.key for m in self.migrations()}:
                raise MigrationError(f"baseline V{version.lstrip('Vv')}: no such migration")
            self._refuse_unsafe(self._status(conn))  # never mark files over a database ahead of the code
            conn.execute(_META_DDL)
            applied = {version_key(v) for v in self._applied(conn)}
            with conn.transaction():
                for migration in self.migrations():
                    if migration.key > limit or migration.key in applied:
                        continue
                    conn.execute(
                        f"INSERT INTO {META_SCHEMA}.schema_history (version, version_key, name, kind, checksum, "
                        "transactional, status, statements, progress, client_host) "
                        "VALUES (%s, %s, %s, 'baseline', %s, %s, 'applied', 0, 0, %s)",
                        (
                            migration.version,
                            list(migration.key),
                            migration.name,
                            migration.up.checksum,
                            migration.up.transactional,
                            socket.gethostname(),
                        ),
                    )
                    marked.append(migration.label)
        return marked

    def verify(self) -> list[str]:
        """Run each applied migration's verify script (read-only, rolled back) and check index validity.

        Returns the problems found; an empty list means verified.
        """
        problems: list[str] = []
        with self._connect() as conn:
            status = self._status(conn)
            problems += [f"drifted: {label}" for label in status.drifted]
            problems += [f"unknown to this code: {label}" for label in status.unknown]
            problems += [f"partially applied: {label}" for label in status.in_progress]
            applied = {version_key(v) for v, row in self._applied(conn).items() if row.status == "applied"}
            for migration in self.migrations():
                if migration.key not in applied or migration.verify is None:
                    continue
                try:
                    with conn.transaction(force_rollback=True):
                        conn.execute("SET TRANSACTION READ ONLY")
                        conn.execute("SET LOCAL search_path TO sigledger, public")
                        for stmt in migration.verify.statements:
                            cur = conn.execute(stmt.sql.encode("utf-8"))
                            if cur.description and (rows := cur.fetchall()):
                                problems.append(
                                    f"{migration.verify.path.name}:{stmt.line}: returned {rows[:3]}"
                                )
                except psycopg.Error as exc:
                    problems.append(f"{migration.verify.path.name}: {exc.sqlstate}: {str(exc).strip()}")
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'sigledger' AND NOT (i.indisvalid AND i.indisready)"
            ).fetchall():
                problems.append(f"INVALID index sigledger.{name}")
        return problems


def status_json(status: Status) -> str:
    return json.dumps(status.as_dict(), indent=2)
