"""The migration runner (no sqitch): versioned files once and in order, repeatable function files on change.

What a DBA gets, and why:
- content checksums (line endings normalised); an applied file that changed is refused by name;
- the history row is written in the migration's own transaction, so a failed migration leaves no row
  (history.py);
- `-- sigledger:no-transaction` files run statement by statement with their progress recorded, and a re-run
  resumes at the statement that failed; a statement that cannot run in a transaction inside a normal file is
  refused before anything runs (files.py, executor.py);
- CREATE INDEX CONCURRENTLY repaired when a build failed (executor.py);
- one runner at a time (lock.py);
- lock_timeout on DDL with retries and backoff (executor.py);
- refusal when the database holds versions this code does not know (it is ahead of the code).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from sigledger.core.db import connect
from sigledger.core.errors import MigrationError
from sigledger.core.paths import functions_dir, migrations_dir
from sigledger.migrate import history
from sigledger.migrate.executor import Executor
from sigledger.migrate.files import (
    Migration,
    Repeatable,
    discover_migrations,
    discover_repeatables,
    version_key,
)
from sigledger.migrate.history import (
    EXIT_DRIFT,
    EXIT_OK,
    EXIT_PENDING,
    META_DDL,
    META_SCHEMA,
    Status,
    status_json,
)
from sigledger.migrate.lock import ADVISORY_LOCK_KEY, runner_lock
from sigledger.migrate.settings import Log, Settings

__all__ = [
    "ADVISORY_LOCK_KEY",
    "EXIT_DRIFT",
    "EXIT_OK",
    "EXIT_PENDING",
    "Migrator",
    "Settings",
    "Status",
    "status_json",
]


class Migrator:
    """The runner's commands (status, plan, up, down, baseline, verify) on one database."""

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

    @contextmanager
    def _session(self, *, locked: bool) -> Iterator[tuple[psycopg.Connection[Any], Executor]]:
        with self._connect() as conn:
            if locked:
                with runner_lock(self._connect, self.settings.runner_wait):
                    yield conn, Executor(conn, self.settings, self.log)
            else:
                yield conn, Executor(conn, self.settings, self.log)

    def _status(self, conn: psycopg.Connection[Any]) -> Status:
        return history.compute_status(conn, self.migrations(), self.repeatables())

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
            applied = {version_key(v): row for v, row in history.applied_rows(conn).items()}
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
        applied = history.applied_rows(conn)
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
        done = history.repeatable_checksums(conn)
        changed = [r for r in self.repeatables() if done.get(r.name) != r.file.checksum]
        if not changed and not migrated:
            return []
        return [r for r in self.repeatables() if r in changed or r.always]

    def up(self, to: str | None = None) -> list[str]:
        ran: list[str] = []
        with self._session(locked=True) as (conn, ex):
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
            conn.execute(META_DDL)
            # By version key: V3_8 and V3_008 are one version (a renamed file resumes its own row).
            applied = {version_key(v): row for v, row in history.applied_rows(conn).items()}
            for migration in pending:
                if migration.up.transactional:
                    ex.apply_transactional(migration)
                else:
                    ex.apply_statementwise(migration, applied.get(migration.key))
                ran.append(migration.label)
            if reps:
                ex.apply_repeatables(reps)
                ran.extend(f"repeatable {r.name}" for r in reps)
        return ran

    # ---- down, baseline, verify ---------------------------------------------------------------------------

    def down(self, to: str) -> list[str]:
        """Roll back every applied migration above version `to` (use `0` for everything), newest first."""
        target = version_key(to.lstrip("Vv"))
        ran: list[str] = []
        with self._session(locked=True) as (conn, ex):
            status = self._status(conn)
            self._refuse_unsafe(status)
            applied = history.applied_rows(conn)
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
            conn.execute(META_DDL)
            # Views come from repeatable files and depend on versioned tables: drop them all first (a down
            # file cannot know which views a later repeatable built on its tables), then rebuild every
            # repeatable if the rolled-back schema still supports it, else leave that to the next `up`.
            ex.drop_views()
            conn.execute(f"DELETE FROM {META_SCHEMA}.repeatable_history")
            try:
                for migration in victims:
                    assert migration.down is not None
                    self.log(f"rolling back {migration.label}")
                    ex.run_down(migration, migration.down)
                    ran.append(migration.label)
            finally:
                self._restore_repeatables(ex)
        return ran

    def _restore_repeatables(self, ex: Executor) -> None:
        reps = self.repeatables()
        if not reps:
            return
        try:
            ex.apply_repeatables(reps)
            self.log("re-applied the repeatable files on the rolled-back schema")
        except (MigrationError, psycopg.Error) as exc:
            self.log(f"repeatable files not re-applied ({exc}); the next `up` re-applies them")

    def baseline(self, version: str) -> list[str]:
        """Mark every migration up to `version` as applied without running it (an existing database)."""
        limit = version_key(version.lstrip("Vv"))
        marked: list[str] = []
        with self._session(locked=True) as (conn, _ex):
            if limit not in {m.key for m in self.migrations()}:
                raise MigrationError(f"baseline V{version.lstrip('Vv')}: no such migration")
            self._refuse_unsafe(self._status(conn))  # never mark files over a database ahead of the code
            conn.execute(META_DDL)
            applied = {version_key(v) for v in history.applied_rows(conn)}
            with conn.transaction():
                for migration in self.migrations():
                    if migration.key > limit or migration.key in applied:
                        continue
                    history.insert_row(
                        conn, migration, kind="baseline", status="applied", statements=0, progress=0
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
            applied = {
                version_key(v) for v, row in history.applied_rows(conn).items() if row.status == "applied"
            }
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
