"""The preflight: everything `up` needs, checked before anything runs, each missing piece named with its fix.

`sigledger migrate preflight` prints it; `plan` shows it; `up` refuses to start while anything is blocked.
What it checks:
- roles: the cluster-wide roles exist as specified (roles.py); a difference is fixed by the runner when the
  login may (superuser, CREATEROLE), else named with the SQL a DBA runs (`sigledger roles sql`);
- group logins: a group applications still log in as is not made NOLOGIN without a word: the preflight says
  which login to create first (or --retire-group-logins);
- the deployer: a member of sigledger_owner that inherits its privileges; CREATE on the database for a first
  deployment (the schemas sigledger and sigledger_meta); nothing else (no TEMP, no superuser);
- ownership: every object of sigledger and sigledger_meta belongs to sigledger_owner, or this login can hand
  it over (the runner then does), else the exact ALTER ... OWNER statements;
- data: each repair rule guarding a pending migration, with counts and examples (repairs.py);
- ledger views: while V8_080 (exact money) is pending, every view on llm_cost_log's money columns that it must
  drop and re-create as sigledger_owner and could not (another owner that sigledger_owner is not a member of,
  no USAGE or CREATE on the view's schema), and every materialized view on them (which it refuses).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from sigledger.migrate import ownership, repairs, roles
from sigledger.migrate.files import Migration
from sigledger.migrate.history import META_SCHEMA
from sigledger.migrate.settings import OWNER_ROLE, Settings

OK, DOES, REPAIR, BLOCKED = "ok", "will do", "data", "BLOCKED"
EXIT_BLOCKED = 5


@dataclass
class Check:
    name: str
    status: str  # ok | will do | data | BLOCKED
    message: str
    fix: str | None = None
    rows: int | None = None
    examples: list[str] = field(default_factory=list)


@dataclass
class Preflight:
    login: str
    checks: list[Check] = field(default_factory=list)
    role_actions: list[roles.RoleAction] = field(default_factory=list)
    take_over: list[ownership.Foreign] = field(default_factory=list)

    @property
    def blocked(self) -> list[Check]:
        return [c for c in self.checks if c.status == BLOCKED]

    def blocked_by(self, name: str) -> list[Check]:
        return [c for c in self.blocked if c.name == name]

    @property
    def exit_code(self) -> int:
        return EXIT_BLOCKED if self.blocked else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "login": self.login,
            "blocked": bool(self.blocked),
            "checks": [asdict(c) for c in self.checks],
            "exit_code": self.exit_code,
        }

    def refusal(self) -> str:
        lines = [f"preflight: {len(self.blocked)} problem(s) block the upgrade; nothing was changed:"]
        for check in self.blocked:
            lines.append(f"  - {check.message}")
            if check.fix:
                lines.extend(f"      {line}" for line in check.fix.splitlines())
        return "\n".join(lines)


def _login(conn: psycopg.Connection[Any]) -> tuple[str, bool, bool, int]:
    row = conn.execute(
        "SELECT current_user, rolsuper, rolcreaterole, current_setting('server_version_num')::int "
        "FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    return str(row[0]), bool(row[1]), bool(row[2]), int(row[3])


def run(
    conn: psycopg.Connection[Any],
    pending: list[Migration],
    repair_rules: list[repairs.Repair],
    settings: Settings,
) -> Preflight:
    user, superuser, createrole, version = _login(conn)
    report = Preflight(login=user)
    report.checks.append(
        Check(
            "login",
            OK,
            f"connected as {user} (superuser: {'yes' if superuser else 'no'}, "
            f"CREATEROLE: {'yes' if createrole else 'no'}, server {version // 10000})",
        )
    )
    _roles(conn, report, user, superuser, createrole, version, settings)
    _deployer(conn, report, user, superuser, pending)
    _ownership(conn, report)
    if any(m.label.endswith("__ledger_exact_money") for m in pending):
        _ledger_views(conn, report)
    for finding in repairs.run_checks(conn, repair_rules, pending):
        report.checks.append(
            Check(
                "data",
                REPAIR,
                f"{finding.finding}: {finding.rows} row(s), {finding.action} ({finding.repair})",
                rows=finding.rows,
                examples=finding.examples,
            )
        )
    return report


def _roles(
    conn: psycopg.Connection[Any],
    report: Preflight,
    user: str,
    superuser: bool,
    createrole: bool,
    version: int,
    settings: Settings,
) -> None:
    states = roles.read_roles(conn)
    member = superuser or (
        states[OWNER_ROLE].exists
        and bool(conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (OWNER_ROLE,)).fetchone()[0])  # type: ignore[index]
    )
    actions = roles.role_actions(states, user, deployer_is_member=member)
    newly = {a.role for a in actions if a.sql.startswith("CREATE ROLE")}

    def may_manage(role: str) -> bool:
        # PostgreSQL 15: CREATEROLE may create, alter and grant any non-superuser role. 16+: only roles it
        # holds ADMIN OPTION on (which it gets on the roles it creates itself).
        if superuser:
            return True
        if not createrole:
            return False
        return version < 160000 or role in newly or _admin_of(conn, role)

    for action in actions:
        allowed = may_manage(action.role)
        if action.retires_login_of and not settings.retire_group_logins:
            state = states[action.retires_login_of]
            why = (
                f"{state.sessions} session(s) are logged in as {state.name} right now"
                if state.sessions
                else f"no login is a member of {state.name}, so applications log in as {state.name} itself"
                if not state.login_members
                else ""
            )
            if why:
                group = next(k for k, v in roles.GROUPS.items() if v == state.name)
                report.checks.append(
                    Check(
                        "group-logins",
                        BLOCKED,
                        f"{state.name} is a group from this release on (NOLOGIN), but {why}",
                        fix=(
                            f"create a login for the application first: sigledger role create-login <name> --as {group}\n"
                            "switch the application to it, then run again (docs/deploying.md, Logins); or pass "
                            "--retire-group-logins to make the group NOLOGIN anyway"
                        ),
                    )
                )
                continue
        if allowed:
            report.role_actions.append(action)
            report.checks.append(Check("roles", DOES, f"{action.why}: the runner runs {action.sql}"))
        else:
            report.checks.append(
                Check(
                    "roles",
                    BLOCKED,
                    f"{action.why}; {user} may not change roles (no CREATEROLE)",
                    fix=f"as a DBA: {action.sql};   (all of it: sigledger roles sql --deployer {user})",
                )
            )
    if not actions:
        report.checks.append(Check("roles", OK, "roles as specified (sigledger roles sql)"))


def _admin_of(conn: psycopg.Connection[Any], role: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) "
        "AND pg_has_role(current_user, %s, 'MEMBER WITH ADMIN OPTION')",
        (role, role),
    ).fetchone()
    return bool(row and row[0])


def _deployer(
    conn: psycopg.Connection[Any], report: Preflight, user: str, superuser: bool, pending: list[Migration]
) -> None:
    if superuser:
        return
    row = conn.execute(
        """SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %(owner)s)
                  AND pg_has_role(current_user, %(owner)s, 'MEMBER')
                  AND NOT pg_has_role(current_user, %(owner)s, 'USAGE'),
                  has_database_privilege(current_database(), 'CREATE'),
                  to_regnamespace(%(meta)s) IS NULL, to_regnamespace('sigledger') IS NULL,
                  current_database()""",
        {"owner": OWNER_ROLE, "meta": META_SCHEMA},
    ).fetchone()
    assert row is not None
    noinherit, create_db, no_meta, no_schema, database = row
    if noinherit:
        report.checks.append(
            Check(
                "deployer",
                BLOCKED,
                f"{user} is a member of {OWNER_ROLE} but does not inherit its privileges (NOINHERIT)",
                fix=f"as a DBA: ALTER ROLE {user} INHERIT;",
            )
        )
    creates_schema = any(m.label.startswith("V3_000") for m in pending) and no_schema
    if (no_meta or creates_schema) and not create_db:
        report.checks.append(
            Check(
                "database",
                BLOCKED,
                f"{user} needs CREATE on database {database} to create the schemas "
                f"{', '.join(s for s, missing in ((META_SCHEMA, no_meta), ('sigledger', creates_schema)) if missing)}",
                fix=f'as a DBA: GRANT CREATE ON DATABASE "{database}" TO "{user}";',
            )
        )


def _ownership(conn: psycopg.Connection[Any], report: Preflight) -> None:
    for schema in (META_SCHEMA, "sigledger"):
        foreign = ownership.foreign_objects(conn, schema)
        if not foreign:
            continue
        if all(o.fixable for o in foreign):
            report.take_over.extend(foreign)
            report.checks.append(
                Check(
                    "ownership",
                    DOES,
                    f"{len(foreign)} object(s) of {schema} belong to "
                    f"{', '.join(sorted({o.owner for o in foreign}))}: the runner hands them to {OWNER_ROLE}",
                )
            )
        else:
            report.checks.append(
                Check(
                    "ownership",
                    BLOCKED,
                    ownership.refusal(foreign, schema).splitlines()[0],
                    fix="\n".join(o.fix for o in foreign if not o.fixable),
                )
            )


# the views (and views on those) that read llm_cost_log.cost_usd/priced_usd: V8_080's own query, with what the
# role its statements run as (sigledger_owner when it exists) may do with each
_LEDGER_VIEWS = """
WITH RECURSIVE deps (oid, depth) AS (
    SELECT DISTINCT r.ev_class, 1
      FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = 'sigledger.llm_cost_log'::regclass
       AND d.refobjsubid IN (SELECT attnum FROM pg_attribute WHERE attrelid = 'sigledger.llm_cost_log'::regclass
                                AND attname IN ('cost_usd', 'priced_usd'))
    UNION
    SELECT r.ev_class, deps.depth + 1
      FROM deps JOIN pg_depend d ON d.refobjid = deps.oid AND d.refclassid = 'pg_class'::regclass
      JOIN pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_rewrite'::regclass
     WHERE r.ev_class <> deps.oid AND deps.depth < 20
), runner AS (
    SELECT CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = %(owner)s) THEN %(owner)s ELSE current_user END
           AS role
)
SELECT DISTINCT format('%%I.%%I', n.nspname, c.relname), c.relkind::text, pg_get_userbyid(c.relowner), n.nspname,
       runner.role,
       pg_has_role(runner.role, c.relowner, 'MEMBER'),
       has_schema_privilege(runner.role, n.oid, 'USAGE'), has_schema_privilege(runner.role, n.oid, 'CREATE')
  FROM deps JOIN pg_class c ON c.oid = deps.oid JOIN pg_namespace n ON n.oid = c.relnamespace, runner
 ORDER BY 1
"""


def _ledger_views(conn: psycopg.Connection[Any], report: Preflight) -> None:
    if conn.execute("SELECT to_regclass('sigledger.llm_cost_log') IS NULL").fetchone()[0]:  # type: ignore[index]
        return
    rows = conn.execute(_LEDGER_VIEWS, {"owner": OWNER_ROLE}).fetchall()
    for name, relkind, owner, schema, runner, member, usage, create in rows:
        keep = f"or save its definition (SELECT pg_get_viewdef('{name}'::regclass)), drop it, and re-create it after"
        if relkind != "v":
            report.checks.append(
                Check(
                    "ledger-views",
                    BLOCKED,
                    f"{name} (relkind {relkind}, owner {owner}) reads llm_cost_log.cost_usd/priced_usd: V8_080 "
                    "changes their type and refuses anything but a plain view on them",
                    fix=f"as its owner: DROP MATERIALIZED VIEW {name}; re-create it after the upgrade",
                )
            )
            continue
        missing = [
            what
            for what, ok in (
                (f"is not a member of its owner {owner}", member),
                (f"has no USAGE on schema {schema}", usage),
                (f"has no CREATE on schema {schema}", create),
            )
            if not ok
        ]
        if missing:
            grants = []
            if not member:
                grants.append(f'GRANT "{owner}" TO "{runner}";')
            if not usage or not create:
                grants.append(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{runner}";')
            report.checks.append(
                Check(
                    "ledger-views",
                    BLOCKED,
                    f"view {name} reads llm_cost_log.cost_usd/priced_usd, which V8_080 drops and re-creates as "
                    f"{runner}; {runner} {', '.join(missing)}",
                    fix=f"as a DBA, for the upgrade: {' '.join(grants)}\n{keep} the upgrade",
                )
            )
    if rows and not report.blocked_by("ledger-views"):
        report.checks.append(
            Check(
                "ledger-views",
                OK,
                f"{len(rows)} view(s) on the ledger's money columns: V8_080 re-creates them",
            )
        )
