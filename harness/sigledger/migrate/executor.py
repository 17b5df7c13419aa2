"""Running SQL files on one connection: session settings, lock-timeout retries, transactional files,
statement-by-statement files with recorded progress, CREATE INDEX CONCURRENTLY repair, repeatables, downs.

A query ended by \\gexec (files.py) runs, then each statement it produced with the same care as a lone
statement of the file (lock-timeout retries, the CONCURRENTLY repair).

CREATE INDEX CONCURRENTLY: a valid index of that name is kept, an INVALID one (a failed build; pg_indexes
still lists it, only pg_index.indisvalid tells) is dropped concurrently and rebuilt, and the result must be
valid; an INVALID one that a backend is still building (its runner was killed: the backend goes on until the
build ends) is waited for, not dropped. lock_timeout on DDL with retries and backoff, so a migration never
queues in front of a busy table's traffic for long; a deadlock (40P01) is retried the same way: the whole
transaction was rolled back, so running it again is safe.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

import psycopg
from psycopg import sql

from sigledger.core.errors import MigrationError
from sigledger.migrate import builds, history
from sigledger.migrate.files import Migration, Repeatable, SqlFile, Statement, Step, generated_statement
from sigledger.migrate.history import META_SCHEMA, Applied
from sigledger.migrate.settings import OWNER_ROLE, Log, Settings

# Errors after which the whole failed transaction (or statement) can simply run again.
RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)


class Executor:
    """Applies files on one autocommit connection; the runner decides what to apply."""

    def __init__(self, conn: psycopg.Connection[Any], settings: Settings, log: Log) -> None:
        self.conn = conn
        self.settings = settings
        self.log = log

    # ---- session ------------------------------------------------------------------------------------------

    def _owner_role_usable(self) -> bool:
        """Objects are created as the owner role once the schema exists (the baseline bootstraps both)."""
        row = self.conn.execute(
            "SELECT to_regnamespace('sigledger') IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) "
            "AND pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = %s), 'MEMBER')",
            (OWNER_ROLE, OWNER_ROLE),
        ).fetchone()
        return bool(row and row[0])

    def session_settings(
        self, *, local: bool, lock_timeout: str, statement_timeout: str, as_owner: bool = True
    ) -> None:
        scope = "LOCAL " if local else ""
        conn = self.conn
        conn.execute(f"SET {scope}search_path TO sigledger, public")
        conn.execute(sql.SQL("SET {}lock_timeout = {}").format(sql.SQL(scope), sql.Literal(lock_timeout)))
        conn.execute(
            sql.SQL("SET {}statement_timeout = {}").format(sql.SQL(scope), sql.Literal(statement_timeout))
        )
        if as_owner and self._owner_role_usable():
            conn.execute(sql.SQL("SET {}ROLE {}").format(sql.SQL(scope), sql.Identifier(OWNER_ROLE)))

    def _local_settings(self, as_owner: bool = True) -> None:
        self.session_settings(
            local=True,
            lock_timeout=self.settings.lock_timeout,
            statement_timeout=self.settings.statement_timeout,
            as_owner=as_owner,
        )

    def with_lock_retries(self, what: str, action: Callable[[], None]) -> None:
        """Retry an action that failed on lock_timeout (55P03) or lost a deadlock (40P01), with exponential
        backoff and jitter. Either way PostgreSQL rolled the transaction back, so nothing is half done."""
        attempt = 0
        while True:
            try:
                action()
                return
            except RETRYABLE as exc:
                attempt += 1
                kind = "deadlock" if isinstance(exc, psycopg.errors.DeadlockDetected) else "lock timeout"
                if attempt > self.settings.retries:
                    raise MigrationError(
                        f"{what}: gave up after {attempt} lock timeouts or deadlocks: {exc.sqlstate}: "
                        f"{str(exc).strip()}",
                        sqlstate=exc.sqlstate,
                    ) from exc
                delay = min(
                    self.settings.retry_base_delay * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5),
                    self.settings.retry_max_delay,
                )
                self.log(f"{what}: {kind}, retry {attempt}/{self.settings.retries} in {delay:.1f}s")
                time.sleep(delay)

    def execute(self, stmt: Statement, label: str) -> None:
        try:
            self.conn.execute(stmt.sql.encode("utf-8"))
        except RETRYABLE:
            raise
        except psycopg.Error as exc:
            raise MigrationError(
                f"{label}:{stmt.line}: {exc.sqlstate}: {str(exc).strip()}", sqlstate=exc.sqlstate
            ) from exc

    # ---- versioned files ----------------------------------------------------------------------------------

    def apply_transactional(self, migration: Migration) -> None:
        up = migration.up
        conn = self.conn

        def run() -> None:
            started = time.monotonic()
            with conn.transaction():
                history.insert_row(
                    conn,
                    migration,
                    kind="versioned",
                    status="applied",
                    statements=len(up.statements),
                    progress=len(up.statements),
                )
                self._local_settings(as_owner=up.as_owner)
                for stmt in up.statements:
                    self.execute(stmt, migration.label)
                conn.execute("RESET ROLE")
                conn.execute(
                    f"UPDATE {META_SCHEMA}.schema_history SET duration_ms = %s WHERE version = %s",
                    (int((time.monotonic() - started) * 1000), migration.version),
                )

        self.log(f"applying {migration.label}")
        self.with_lock_retries(migration.label, run)

    def apply_statementwise(self, migration: Migration, previous: Applied | None) -> None:
        up = migration.up
        conn = self.conn
        started = time.monotonic()
        if previous is None:
            history.insert_row(
                conn,
                migration,
                kind="versioned",
                status="in_progress",
                statements=len(up.statements),
                progress=0,
            )
            row_version = migration.version
            start_at = 0
        else:
            row_version = previous.version
            start_at = previous.progress
            if start_at and not any(step.end == start_at for step in up.steps):
                raise MigrationError(
                    f"{migration.label}: recorded progress {start_at} is not a step boundary of the file "
                    "(was it edited while partially applied?); restore the file that started it"
                )
            self.log(f"resuming {migration.label} at statement {start_at + 1} of {len(up.statements)}")
        self.log(f"applying {migration.label} (non-transactional)")
        for step in up.steps:
            if step.end <= start_at:
                continue
            if self.settings.before_step is not None:
                self.settings.before_step(f"{migration.label}:{step.start}")
            where = f"{migration.label}:{step.statements[0].line if step.statements else 0}"
            try:
                if step.transaction:
                    self.with_lock_retries(where, partial(self._run_group, step, up, migration, row_version))
                    continue
                self.run_lone(step.statements[0], migration)
            except MigrationError as exc:
                with suppress(psycopg.Error):
                    conn.execute("RESET ROLE")
                    conn.execute(
                        f"UPDATE {META_SCHEMA}.schema_history SET last_error = %s WHERE version = %s",
                        (str(exc), row_version),
                    )
                raise
            conn.execute(
                f"UPDATE {META_SCHEMA}.schema_history SET progress = %s, last_error = NULL WHERE version = %s",
                (step.end, row_version),
            )
        conn.execute(
            f"UPDATE {META_SCHEMA}.schema_history SET status = 'applied', duration_ms = %s, "
            "applied_at = clock_timestamp() WHERE version = %s",
            (int((time.monotonic() - started) * 1000), row_version),
        )

    def _run_group(self, step: Step, source: SqlFile, migration: Migration, row_version: str) -> None:
        """A BEGIN ... COMMIT group of a no-transaction file: one transaction, progress recorded inside it."""
        conn = self.conn
        with conn.transaction():
            self._local_settings(as_owner=source.as_owner)
            for stmt in step.statements:
                self.execute(stmt, migration.label)
            conn.execute("RESET ROLE")
            conn.execute(
                f"UPDATE {META_SCHEMA}.schema_history SET progress = %s, last_error = NULL WHERE version = %s",
                (step.end, row_version),
            )

    def run_lone(
        self,
        stmt: Statement,
        migration: Migration | None,
        source: SqlFile | None = None,
        label: str | None = None,
    ) -> None:
        """A lone step of a non-transactional file: the statement, retried after a lock timeout; or a \\gexec
        query (retried likewise), then each statement it produced, in order, each on its own and retried."""
        source = source or (migration.up if migration else None)
        assert source is not None
        label = label or (migration.label if migration else source.path.name)
        where = f"{label}:{stmt.line}"
        if not stmt.gexec:
            self.with_lock_retries(where, partial(self.run_one, stmt, migration, source, label))
            return
        produced: list[Statement] = []
        self.with_lock_retries(where, partial(self._generate, stmt, source, label, produced))
        self.log(f"  {where}: \\gexec: {len(produced)} statement(s)")
        for i, gen in enumerate(produced, 1):
            what = f"({i}/{len(produced)}) {gen.sql.splitlines()[0][:100]}"
            self.log(f"  {where}: {what}")
            try:
                self.with_lock_retries(
                    f"{where} ({i}/{len(produced)})", partial(self.run_one, gen, migration, source, label)
                )
            except MigrationError as exc:
                raise MigrationError(f"{exc} [\\gexec statement {what}]", sqlstate=exc.sqlstate) from exc

    def _generate(self, stmt: Statement, source: SqlFile, label: str, out: list[Statement]) -> None:
        """Runs a \\gexec query; `out` gets its non-NULL values as statements, row by row, column by column."""
        conn = self.conn
        self.session_settings(
            local=False,
            lock_timeout=self.settings.lock_timeout,
            statement_timeout=self.settings.statement_timeout,
            as_owner=source.as_owner,
        )
        try:
            try:
                # in a READ ONLY transaction: the query only lists statements. One that writes (a data-modifying
                # CTE, nextval, a row lock, a function that writes, DDL such as CREATE INDEX CONCURRENTLY) fails
                # here with 25006 before anything is written, rather than writing again at every re-run of its
                # resume point (tests/migrate/test_gexec.py)
                with conn.transaction():
                    conn.execute("SET TRANSACTION READ ONLY")
                    cur = conn.execute(stmt.sql.encode("utf-8"))
                    rows = cur.fetchall() if cur.description else []
            except RETRYABLE:
                raise
            except psycopg.Error as exc:
                raise MigrationError(
                    f"{label}:{stmt.line}: {exc.sqlstate}: {str(exc).strip()}", sqlstate=exc.sqlstate
                ) from exc
        finally:
            with suppress(psycopg.Error):
                conn.execute("RESET ROLE")
                conn.execute("RESET lock_timeout")
                conn.execute("RESET statement_timeout")
        out.clear()
        out.extend(
            generated_statement(str(value), label, stmt.line)
            for row in rows
            for value in row
            if value is not None
        )

    def run_one(
        self,
        stmt: Statement,
        migration: Migration | None,
        source: SqlFile | None = None,
        label: str | None = None,
    ) -> None:
        """Run one statement of a non-transactional file (`source`, default the migration's up file)."""
        source = source or (migration.up if migration else None)
        assert source is not None
        label = label or (migration.label if migration else source.path.name)
        conn = self.conn
        concurrent = stmt.concurrent_index
        needs_long = stmt.needs_no_transaction
        self.session_settings(
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
                builds.wait_for_orphaned_build(self.conn, schema, name, self.settings.runner_wait, self.log)
                state = self.index_state(schema, name)
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
                                *(p for p in (schema or builds.index_schema(conn, name), name) if p)
                            )
                        )
                    )
            self.execute(stmt, label)
            if concurrent is not None and self.index_state(*concurrent) is not True:
                raise MigrationError(f"{label}:{stmt.line}: index {concurrent[1]} is not valid after build")
        finally:
            with suppress(psycopg.Error):
                conn.execute("RESET ROLE")
                conn.execute("RESET lock_timeout")
                conn.execute("RESET statement_timeout")

    def index_state(self, schema: str | None, name: str) -> bool | None:
        return builds.index_state(self.conn, schema, name)

    # ---- repeatables, views, downs ------------------------------------------------------------------------

    def apply_repeatables(self, reps: list[Repeatable]) -> None:
        conn = self.conn

        def run() -> None:
            with conn.transaction():
                self._local_settings()
                for rep in reps:
                    self.log(f"applying repeatable {rep.name}")
                    for stmt in rep.file.statements:
                        self.execute(stmt, rep.name)
                conn.execute("RESET ROLE")
                for rep in reps:
                    history.record_repeatable(conn, rep)

        self.with_lock_retries("repeatables", run)

    def drop_views(self) -> None:
        conn = self.conn
        with conn.transaction():
            self._local_settings()
            views = conn.execute(
                "SELECT c.oid::regclass::text, c.relkind FROM pg_class c "
                "WHERE c.relnamespace = to_regnamespace('sigledger') AND c.relkind IN ('v', 'm')"
            ).fetchall()
            for name, relkind in views:
                kind = "MATERIALIZED VIEW" if relkind == "m" else "VIEW"
                conn.execute(sql.SQL(f"DROP {kind} IF EXISTS {{}} CASCADE").format(sql.SQL(name)))
            conn.execute("RESET ROLE")

    def run_file(self, source: SqlFile, label: str, after: Callable[[], None] | None = None) -> None:
        """Run a whole file (a down or repair file): one transaction, or step by step for a no-transaction
        file; `after` runs at the end (inside the transaction of a transactional file)."""
        conn = self.conn
        if source.transactional:

            def run() -> None:
                with conn.transaction():
                    self._local_settings(as_owner=source.as_owner)
                    for stmt in source.statements:
                        self.execute(stmt, label)
                    conn.execute("RESET ROLE")
                    if after is not None:
                        after()

            self.with_lock_retries(label, run)
            return
        for step in source.steps:
            where = f"{label}:{step.statements[0].line if step.statements else 0}"
            if step.transaction:

                def group(step: Step = step) -> None:
                    with conn.transaction():
                        self._local_settings(as_owner=source.as_owner)
                        for stmt in step.statements:
                            self.execute(stmt, label)

                self.with_lock_retries(where, group)
            else:
                self.run_lone(step.statements[0], None, source, label)
        if after is not None:
            after()

    def run_down(self, migration: Migration, down: SqlFile) -> None:
        self.run_file(down, down.path.name, after=partial(history.delete_row, self.conn, migration.version))
