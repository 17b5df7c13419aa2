"""`down`: what a rollback would lose, and the refusal to lose it without --force.

The down files are read by the PostgreSQL parser: each DROP TABLE, DROP SCHEMA ... CASCADE and ALTER TABLE ...
DROP COLUMN is a potential loss, counted on the live database (rows of a table, non-NULL values of a column).
A down file that moves rows elsewhere before dropping their table says so in a header
(`-- sigledger:no-loss <table> ...`, with a comment why), e.g. V4_004's down moves every ledger row back into
the plain table and drops only the partitioned parent and the key registry derived from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from pglast import ast, enums
from psycopg import sql

from sigledger.core.errors import MigrationError
from sigledger.migrate import history
from sigledger.migrate.files import Migration, version_key
from sigledger.migrate.history import META_SCHEMA
from sigledger.migrate.settings import Log

if TYPE_CHECKING:
    from sigledger.migrate.executor import Executor

HEADER_NO_LOSS = "sigledger:no-loss"


@dataclass(frozen=True)
class Loss:
    migration: str
    what: str
    rows: int

    def describe(self) -> str:
        return f"{self.what}: {self.rows} row(s) ({self.migration})"


class DataLossRefused(MigrationError):
    """A rollback would drop tables or columns that hold rows, and --force was not given."""


def _name(parts: list[str]) -> tuple[str, str]:
    return (parts[0], parts[1]) if len(parts) == 2 else ("sigledger", parts[-1])


def _count(conn: psycopg.Connection[Any], schema: str, table: str, column: str | None = None) -> int | None:
    exists = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, table),
    ).fetchone()
    if not exists:
        return None
    if column is not None:
        has = conn.execute(
            "SELECT FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s AND NOT attisdropped",
            (f"{schema}.{table}", column),
        ).fetchone()
        if has is None:
            return None
        query = sql.SQL("SELECT count({}) FROM {}.{}").format(
            sql.Identifier(column), sql.Identifier(schema), sql.Identifier(table)
        )
    else:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def losses(conn: psycopg.Connection[Any], victims: list[Migration]) -> list[Loss]:
    """Rows that rolling back `victims` (newest first) would destroy, by table and column."""
    out: list[Loss] = []
    seen: set[tuple[str, str, str | None]] = set()

    def add(label: str, schema: str, table: str, column: str | None = None) -> None:
        if (schema, table, column) in seen:
            return
        seen.add((schema, table, column))
        count = _count(conn, schema, table, column)
        if count:
            what = f"column {schema}.{table}.{column}" if column else f"table {schema}.{table}"
            out.append(Loss(label, what, count))

    for migration in victims:
        if migration.down is None:
            continue
        keep = set(migration.down.header_args.get(HEADER_NO_LOSS, ()))
        for stmt in migration.down.statements:
            node = stmt.node
            if isinstance(node, ast.DropStmt) and node.removeType == enums.ObjectType.OBJECT_TABLE:
                for obj in node.objects or ():
                    schema, table = _name([part.sval for part in obj])
                    if table not in keep:
                        add(migration.label, schema, table)
            elif isinstance(node, ast.DropStmt) and node.removeType == enums.ObjectType.OBJECT_SCHEMA:
                for obj in node.objects or ():
                    schema = obj.sval
                    tables = conn.execute(
                        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1",
                        (schema,),
                    ).fetchall()
                    for (table,) in tables:
                        add(migration.label, schema, table)
            elif isinstance(node, ast.AlterTableStmt) and node.relation is not None:
                schema = node.relation.schemaname or "sigledger"
                for cmd in node.cmds or ():
                    if cmd.subtype == enums.AlterTableType.AT_DropColumn and cmd.name:
                        add(migration.label, schema, str(node.relation.relname), cmd.name)
    return out


def refusal(found: list[Loss], to: str) -> str:
    lines = [f"rolling back to {to} would destroy data; nothing was changed. It would lose:"]
    lines.extend(f"  {loss.describe()}" for loss in found)
    lines.append(f"Run `sigledger migrate down --to {to} --force` to roll back anyway (dump the data first).")
    return "\n".join(lines)


def roll_back(
    conn: psycopg.Connection[Any],
    ex: Executor,
    victims: list[Migration],
    *,
    to: str,
    force: bool,
    log: Log,
    restore: Callable[[], None],
) -> list[str]:
    """Run the down files of `victims` (newest first) after the refusals: a missing down file, a file that
    cannot run, and, without `force`, any loss of rows (or `--to 0`)."""
    missing = [m.label for m in victims if m.down is None]
    if missing:
        raise MigrationError("no down file for " + ", ".join(missing) + "; nothing was rolled back")
    for migration in victims:
        assert migration.down is not None
        migration.down.check_statements()
    if not victims:
        return []
    lost = losses(conn, victims)
    if not force and (lost or version_key(to.lstrip("Vv")) == (0,)):
        if not lost:
            raise DataLossRefused(
                f"down --to {to} drops the whole schema (it holds no rows now); run with --force"
            )
        raise DataLossRefused(refusal(lost, to))
    for loss in lost:
        log(f"dropping {loss.describe()} (--force)")
    history.ensure_meta(conn)
    # Views come from repeatable files and depend on versioned tables: drop them all first (a down file cannot
    # know which views a later repeatable built on its tables), then rebuild every repeatable if the
    # rolled-back schema still supports it, else leave that to the next `up`.
    ex.drop_views()
    conn.execute(f"DELETE FROM {META_SCHEMA}.repeatable_history")
    ran: list[str] = []
    try:
        for migration in victims:
            assert migration.down is not None
            log(f"rolling back {migration.label}")
            ex.run_down(migration, migration.down)
            ran.append(migration.label)
    finally:
        restore()
    return ran
