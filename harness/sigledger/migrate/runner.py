"""The migration runner (no sqitch): versioned files once and in order, repeatable function files on change.

What a DBA gets, and why:
- a preflight before anything runs: roles, privileges, ownership, and the data a pending migration would refuse
  (preflight.py, repairs.py); `up` starts only when nothing is blocked;
- the cluster-wide roles converged to their specification, a statement only where the cluster differs
  (roles.py), so a deployer needs CREATEROLE only when a role is missing or wrong;
- content checksums (line endings normalised); an applied file that changed is refused by name, unless the
  change is a rewrite of a released file that lists the old checksum (files.HEADER_SUPERSEDES);
- the history row is written in the migration's own transaction, so a failed migration leaves no row
  (history.py);
- `-- sigledger:no-transaction` files run step by step (a statement, or a BEGIN ... COMMIT group) with their
  progress recorded, and a re-run resumes at the step that failed (files.py, executor.py);
- data repairs run right before the released migration they guard (repairs.py);
- CREATE INDEX CONCURRENTLY repaired when a build failed, waited for when a killed runner's backend is still
  building it (builds.py);
- one runner at a time (lock.py), and a running one says what it waits for (watch.py);
- lock_timeout on DDL with retries and backoff, deadlocks retried the same way (executor.py);
- refusal when the database holds versions this code does not know (it is ahead of the code);
- a rollback that would lose rows refused without --force (rollback.py); verify that checks what it claims
  (verify.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from sigledger.core.db import connect
from sigledger.core.errors import MigrationError
from sigledger.core.paths import functions_dir, migrations_dir, repairs_dir
from sigledger.migrate import history, ownership, plans, preflight, repairs, roles, rollback, verify
from sigledger.migrate.executor import Executor
from sigledger.migrate.files import (
    Migration,
    Repeatable,
    discover_migrations,
    discover_repeatables,
    version_key,
)
from sigledger.migrate.history import EXIT_DRIFT, EXIT_OK, EXIT_PENDING, META_SCHEMA, Status, status_json
from sigledger.migrate.lock import ADVISORY_LOCK_KEY, live_runner, runner_lock
from sigledger.migrate.repairs import Repair, discover_repairs
from sigledger.migrate.settings import Log, Settings
from sigledger.migrate.watch import watching

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
    """The runner's commands (status, preflight, plan, up, down, baseline, verify, history) on one database."""

    def __init__(
        self,
        dsn: str,
        *,
        migrations: Path | None = None,
        functions: Path | None = None,
        repairs: Path | None = None,
        settings: Settings | None = None,
        log: Log | None = None,
    ) -> None:
        self.dsn = dsn
        self.migrations_path = migrations or migrations_dir()
        self.functions_path = functions or functions_dir()
        # a fixture migration set has no repairs unless it names a folder
        self.repairs_path = repairs if (repairs or migrations) else repairs_dir()
        self.settings = settings or Settings()
        self.log: Log = log or (lambda _msg: None)

    # ---- discovery and state ------------------------------------------------------------------------------

    def migrations(self) -> list[Migration]:
        return discover_migrations(self.migrations_path)

    def repeatables(self) -> list[Repeatable]:
        return discover_repeatables(self.functions_path) if self.functions_path.is_dir() else []

    def repairs(self) -> list[Repair]:
        return discover_repairs(self.repairs_path)

    def _connect(self) -> psycopg.Connection[Any]:
        return connect(self.dsn, application_name=self.settings.application_name, autocommit=True)

    @contextmanager
    def _session(self, *, locked: bool) -> Iterator[tuple[psycopg.Connection[Any], Executor]]:
        with self._connect() as conn:
            if not locked:
                yield conn, Executor(conn, self.settings, self.log)
                return
            with (
                runner_lock(self._connect, self.settings.runner_wait, self.log),
                watching(self._connect, conn.info.backend_pid, self.log),
            ):
                yield conn, Executor(conn, self.settings, self.log)

    def _status(self, conn: psycopg.Connection[Any], runner: dict[str, Any] | None = None) -> Status:
        return history.compute_status(conn, self.migrations(), self.repeatables(), runner)

    def status(self) -> Status:
        with self._connect() as conn:
            return self._status(conn, live_runner(conn))

    def history(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            return history.listing(conn, self.migrations())

    def preflight(self, to: str | None = None) -> preflight.Preflight:
        with self._connect() as conn:
            try:
                pending = self._pending(conn, to)
            except MigrationError:
                pending = []  # the history is unreadable: the ownership check below says why and how to fix it
            return preflight.run(conn, pending, self.repairs(), self.settings)

    def plan(self, to: str | None = None) -> plans.Plan:
        """What `up` would do, in order, with the preflight's findings; nothing is changed."""
        with self._connect() as conn:
            status = self._status(conn)
            self._refuse_unsafe(status)
            self._refuse_out_of_order(status)
            pending = self._pending(conn, to)
            reps = self._repeatables_to_apply(conn, bool(pending)) if self._reaches_head(to) else []
            self._check_files(pending, reps)
            report = preflight.run(conn, pending, self.repairs(), self.settings)
            applied = {version_key(v): row for v, row in history.applied_rows(conn).items()}
            row = conn.execute(
                "SELECT to_regnamespace('sigledger') IS NOT NULL, to_regnamespace(%s) IS NOT NULL",
                (META_SCHEMA,),
            ).fetchone()
            assert row is not None
            plan = plans.build(
                report,
                pending,
                applied,
                self.repairs(),
                reps,
                schema_exists=bool(row[0]),
                meta_exists=bool(row[1]),
            )
            plan.lock_timeout, plan.statement_timeout = (
                self.settings.lock_timeout,
                self.settings.statement_timeout,
            )
            return plan

    # ---- up -----------------------------------------------------------------------------------------------

    def _refuse_unsafe(self, status: Status) -> None:
        history.refuse_unsafe(status)

    def _refuse_out_of_order(self, status: Status) -> None:
        history.refuse_out_of_order(status, self.settings.allow_out_of_order)

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

    def _check_files(self, pending: list[Migration], reps: list[Repeatable]) -> None:
        """Everything is parsed and checked before anything runs: a refused file leaves the database as it was."""
        for migration in pending:
            migration.up.check_statements()
            for repair in self.repairs():
                if repair.guards(migration):
                    repair.file.check_statements()
        for rep in reps:
            rep.file.check_statements(transactional=True)  # repeatables run in one transaction

    def up(self, to: str | None = None) -> list[str]:
        ran: list[str] = []
        with self._session(locked=True) as (conn, ex):
            status = self._status(conn)
            self._refuse_unsafe(status)
            self._refuse_out_of_order(status)
            pending = self._pending(conn, to)
            reps = self._repeatables_to_apply(conn, bool(pending)) if self._reaches_head(to) else []
            self._check_files(pending, reps)
            report = preflight.run(conn, pending, self.repairs(), self.settings)
            if report.blocked:
                raise MigrationError(report.refusal())
            if report.role_actions:
                roles.apply_actions(conn, report.role_actions, self.log)
            if report.take_over:
                ownership.take_over(conn, report.take_over, self.log)
            history.ensure_meta(conn)
            # By version key: V3_8 and V3_008 are one version (a renamed file resumes its own row).
            applied = {version_key(v): row for v, row in history.applied_rows(conn).items()}
            for migration in pending:
                repairs.run_before(conn, ex, self.repairs(), migration, self.log)
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

    def losses(self, to: str) -> list[rollback.Loss]:
        with self._connect() as conn:
            return rollback.losses(conn, self._victims(conn, to))

    def _victims(self, conn: psycopg.Connection[Any], to: str) -> list[Migration]:
        target = version_key(to.lstrip("Vv"))
        by_version = {m.version: m for m in self.migrations()}
        victims = [
            by_version[v] for v in history.applied_rows(conn) if version_key(v) > target and v in by_version
        ]
        return sorted(victims, key=lambda m: m.key, reverse=True)

    def down(self, to: str, *, force: bool = False) -> list[str]:
        """Roll back every applied migration above version `to` (use `0` for everything), newest first.
        Refused, with what would be lost, when it drops rows (or everything) and `force` is not set."""
        with self._session(locked=True) as (conn, ex):
            self._refuse_unsafe(self._status(conn))
            victims = self._victims(conn, to)
            return rollback.roll_back(
                conn,
                ex,
                victims,
                to=to,
                force=force,
                log=self.log,
                restore=lambda: self._restore_repeatables(ex),
            )

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
        """Mark every migration up to `version` as applied without running it (an existing database). The
        objects must belong to sigledger_owner: the runner hands them over when this login owns them, else
        refuses with the exact statements a DBA runs."""
        limit = version_key(version.lstrip("Vv"))
        marked: list[str] = []
        with self._session(locked=True) as (conn, _ex):
            if limit not in {m.key for m in self.migrations()}:
                raise MigrationError(f"baseline V{version.lstrip('Vv')}: no such migration")
            self._refuse_unsafe(self._status(conn))  # never mark files over a database ahead of the code
            report = preflight.run(conn, [], [], self.settings)
            if report.blocked:
                raise MigrationError(report.refusal())
            if report.role_actions:
                roles.apply_actions(conn, report.role_actions, self.log)
            if report.take_over:
                ownership.take_over(conn, report.take_over, self.log)
            history.ensure_meta(conn)
            applied = {version_key(v) for v in history.applied_rows(conn)}
            # the verify scripts of what is marked: the database must hold what those migrations make
            problems = [p for m in self.migrations() if m.key <= limit for p in verify.verify_script(conn, m)]
            if problems:
                raise MigrationError(
                    f"baseline V{version.lstrip('Vv')}: the database does not hold what those migrations make:\n  "
                    + "\n  ".join(problems)
                )
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
        """Everything verify.py checks; an empty list means verified."""
        with self._connect() as conn:
            status = self._status(conn, live_runner(conn))
            return verify.problems(conn, status, self.migrations(), self.repeatables())
