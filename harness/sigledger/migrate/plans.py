"""`plan`: what `up` would do, in order, as text, JSON (`--json`) or the exact SQL (`--sql`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from sigledger.migrate.files import Migration, Repeatable, SqlFile
from sigledger.migrate.history import META_SCHEMA, META_TABLES, Applied
from sigledger.migrate.preflight import Preflight
from sigledger.migrate.repairs import Repair
from sigledger.migrate.settings import OWNER_ROLE


@dataclass
class PlanStep:
    kind: str  # roles | ownership | repair | migration | repeatable
    name: str
    detail: str
    transactional: bool
    sql: list[str] = field(default_factory=list)


@dataclass
class Plan:
    preflight: Preflight
    steps: list[PlanStep]
    lock_timeout: str = "1s"
    statement_timeout: str = "30min"

    def lines(self) -> list[str]:
        """One line per step (the runner's own bookkeeping left out)."""
        return [
            f"repeatable {s.name}" if s.kind == "repeatable" else f"{s.name} ({s.detail})"
            for s in self.steps
            if s.kind != "runner"
        ]

    def as_json(self) -> str:
        return json.dumps(
            {"preflight": self.preflight.as_dict(), "steps": [asdict(s) for s in self.steps]},
            indent=2,
            default=str,
        )

    def as_sql(self) -> str:
        """The statements `up` runs, in order, each unit as the runner runs it (the runner's own bookkeeping in
        sigledger_meta is left out)."""
        out = [
            "-- sigledger migrate plan --sql: the statements `up` would run, in order. The runner also writes its",
            "-- history rows, retries a step after a lock timeout or a deadlock, and keeps or rebuilds an index a",
            "-- CONCURRENTLY build left; psql -v ON_ERROR_STOP=1 -f runs this file as it stands.",
            "SET search_path TO sigledger, public;",
            f"SET lock_timeout = '{self.lock_timeout}';",
            f"SET statement_timeout = '{self.statement_timeout}';",
            "",
        ]
        reps = [s for s in self.steps if s.kind == "repeatable"]
        for step in self.steps:
            if step.kind == "repeatable":
                if step is reps[0]:  # the repeatable files run together in one transaction
                    out += [
                        f"-- repeatable files: {', '.join(r.name for r in reps)} (one transaction)",
                        "BEGIN;",
                    ]
                    out.append(f"SET LOCAL ROLE {OWNER_ROLE};")
                out.append(f"-- {step.name}")
                out.extend(_terminated(step.sql))
                if step is reps[-1]:
                    out += ["COMMIT;", ""]
                continue
            out.append(f"-- {step.kind}: {step.name} ({step.detail})")
            if step.transactional:
                out.append("BEGIN;")
            out.extend(_terminated(step.sql))
            if step.transactional:
                out.append("COMMIT;")
            out.append("")
        return "\n".join(out)


def _statements(text: str) -> list[str]:
    chunks = (
        "\n".join(line for line in c.splitlines() if not line.strip().startswith("--"))
        for c in text.split(";\n")
    )
    return [c.strip() for c in chunks if c.strip()]


def _terminated(statements: list[str]) -> list[str]:
    return [s if s.rstrip().endswith((";", "\\gexec")) else s + ";" for s in statements]


def _file_sql(file: SqlFile, start_at: int = 0, owner: bool = True) -> tuple[list[str], str]:
    """The statements of a file as the runner runs them; `owner`: whether the owner role is usable yet (the
    runner runs as sigledger_owner once the schema sigledger exists)."""
    as_owner = file.as_owner and owner
    role = [f"SET LOCAL ROLE {OWNER_ROLE}"] if as_owner else []
    if file.transactional:
        return [*role, *(s.sql for s in file.statements)], f"transactional, {len(file.statements)} statements"
    out: list[str] = []
    for step in file.steps:
        if step.end <= start_at:
            continue
        if step.transaction:
            out += ["BEGIN", *role, *(s.sql for s in step.statements), "COMMIT"]
        else:
            out += [f"SET ROLE {OWNER_ROLE}"] if as_owner else []
            out += [s.sql + "\n\\gexec" if s.gexec else s.sql for s in step.statements]
            out += ["RESET ROLE"] if as_owner else []
    if start_at:
        return out, f"non-transactional, resumes at statement {start_at + 1} of {len(file.statements)}"
    return out, f"non-transactional, {len(file.statements)} statements"


def build(
    report: Preflight,
    pending: list[Migration],
    applied: dict[tuple[int, ...], Applied],
    repair_rules: list[Repair],
    reps: list[Repeatable],
    *,
    schema_exists: bool,
    meta_exists: bool,
) -> Plan:
    steps: list[PlanStep] = []
    if report.role_actions:
        steps.append(
            PlanStep(
                "roles",
                "roles",
                "cluster-wide, only what differs",
                False,
                [a.sql for a in report.role_actions],
            )
        )
    if report.take_over:
        steps.append(
            PlanStep(
                "ownership",
                "ownership",
                "hand objects to sigledger_owner",
                True,
                [o.fix for o in report.take_over],
            )
        )
    if not meta_exists and (pending or reps):
        steps.append(
            PlanStep(
                "runner",
                META_SCHEMA,
                "the runner's history, repair log and quarantine",
                False,
                [
                    f"CREATE SCHEMA IF NOT EXISTS {META_SCHEMA} AUTHORIZATION {OWNER_ROLE}",
                    f"SET ROLE {OWNER_ROLE}",
                    *_statements(META_TABLES),
                    "RESET ROLE",
                ],
            )
        )
    owner = schema_exists
    for migration in pending:
        for repair in repair_rules:
            if repair.guards(migration):
                sql, detail = _file_sql(repair.file, owner=owner)
                steps.append(
                    PlanStep(
                        "repair",
                        repair.name,
                        f"before {migration.label}; {detail}",
                        repair.file.transactional,
                        sql,
                    )
                )
        previous = applied.get(migration.key)
        start_at = previous.progress if previous is not None and previous.status == "in_progress" else 0
        sql, detail = _file_sql(migration.up, start_at, owner)
        steps.append(PlanStep("migration", migration.label, detail, migration.up.transactional, sql))
        owner = True  # the first migration (V3_000) creates the schema
    for rep in reps:
        sql = [s.sql for s in rep.file.statements]
        steps.append(
            PlanStep("repeatable", rep.name, "with the other repeatable files, one transaction", True, sql)
        )
    return Plan(report, steps)
