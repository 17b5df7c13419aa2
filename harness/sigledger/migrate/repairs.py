"""Data repairs: what an earlier schema accepted and a released migration refuses (seed-era data).

A released migration cannot change without drifting every database that applied it, and the data it refuses
was written by applications of the previous schema. So each rule lives beside the migrations in sql/repairs:

- `R<nnn>__<name>.sql` (header `-- sigledger:before V5_002 V5_003`) runs right before each listed version
  whenever the runner is about to apply or resume it, in its own transaction(s), as sigledger_owner. It is
  idempotent, changes rows by a documented deterministic rule or moves them to sigledger_meta.quarantine with
  their reason (never deletes), and logs what it did in sigledger_meta.repair_history. A database that applied
  the version already never runs it.
- `R<nnn>__<name>.check.sql` is read-only: the preflight runs it while any listed version is pending, on
  whatever schema the database has then (the checks only read columns the oldest schema had, or read a row as
  jsonb), and reports each finding with its count, examples and action before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from sigledger.core.errors import MigrationError
from sigledger.migrate.files import HEADER_BEFORE, Migration, SqlFile, version_key
from sigledger.migrate.history import META_SCHEMA
from sigledger.migrate.settings import Log

if TYPE_CHECKING:
    from sigledger.migrate.executor import Executor

_REPAIR = re.compile(r"^R(?P<order>\d+)__(?P<name>[A-Za-z0-9_\-]+?)(?P<check>\.check)?\.sql$")


@dataclass(frozen=True)
class Repair:
    name: str
    file: SqlFile
    check: SqlFile | None
    before: tuple[tuple[int, ...], ...] = field(default=())

    def guards(self, migration: Migration) -> bool:
        return migration.key in self.before


@dataclass
class Finding:
    """One kind of data a pending migration would refuse."""

    repair: str
    finding: str
    action: str  # repair | quarantine
    rows: int
    examples: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "repair": self.repair,
            "finding": self.finding,
            "action": self.action,
            "rows": self.rows,
            "examples": self.examples,
        }


def discover_repairs(directory: Path | None) -> list[Repair]:
    if directory is None or not directory.is_dir():
        return []
    ups: dict[str, Path] = {}
    checks: dict[str, Path] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _REPAIR.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: not a repair file name (expected R<nnn>__<name>[.check].sql)")
        stem = f"R{match['order']}__{match['name']}"
        (checks if match["check"] else ups)[stem] = path
    out = []
    for stem, path in ups.items():
        file = SqlFile(path)
        versions = file.header_args.get(HEADER_BEFORE, [])
        if not versions:
            raise MigrationError(f"{path.name}: no '-- {HEADER_BEFORE} V<version> ...' header")
        before = tuple(version_key(v.lstrip("Vv")) for v in versions)
        out.append(Repair(path.name, file, SqlFile(checks[stem]) if stem in checks else None, before))
    for stem in checks.keys() - ups.keys():
        raise MigrationError(f"{checks[stem].name}: a check without its repair file {stem}.sql")
    return out


def run_checks(
    conn: psycopg.Connection[Any], repairs: list[Repair], pending: list[Migration]
) -> list[Finding]:
    """The findings of every repair that guards a pending migration (read-only, rolled back)."""
    findings: list[Finding] = []
    for repair in repairs:
        if repair.check is None or not any(repair.guards(m) for m in pending):
            continue
        for stmt in repair.check.statements:
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute("SET TRANSACTION READ ONLY")
                    rows = conn.execute(stmt.sql.encode("utf-8")).fetchall()
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
                continue  # the tables do not exist yet: nothing to repair
            for finding, action, count, examples in rows:
                if count:
                    findings.append(Finding(repair.name, finding, action, int(count), list(examples or [])))
    return findings


def run_before(
    conn: psycopg.Connection[Any], ex: Executor, rules: list[Repair], migration: Migration, log: Log
) -> None:
    """Run every repair that guards `migration` (it is about to run or resume), and say what each did."""
    for repair in rules:
        if not repair.guards(migration):
            continue
        last = conn.execute(f"SELECT coalesce(max(id), 0) FROM {META_SCHEMA}.repair_history").fetchone()
        conn.execute("SELECT set_config('sigledger.repair_before', %s, false)", (migration.label,))
        try:
            ex.run_file(repair.file, repair.name)
        finally:
            conn.execute("RESET sigledger.repair_before")
        for rule, action, rows, detail in conn.execute(
            f"SELECT rule, action, rows, detail FROM {META_SCHEMA}.repair_history WHERE id > %s ORDER BY id",
            (last[0] if last else 0,),
        ).fetchall():
            log(
                f"repair {repair.name} before {migration.label}: {rule}: {action} {rows} row(s)"
                + (f" ({detail})" if detail else "")
            )
