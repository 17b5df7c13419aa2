"""The cluster-wide roles: one specification, compared with the cluster, converged by the runner, printed as SQL
for a DBA (`sigledger roles sql`), and the member logins applications connect as (`sigledger role create-login`).

- `sigledger_owner` (NOLOGIN) owns every object; a deployer is a member of it.
- `sigledger_app`, `_readonly`, `_admin`, `_graph` are NOLOGIN groups that hold privileges only. Nobody logs in
  as one: a role's settings (statement_timeout ...) apply only at login as that very role, and PostgreSQL lets
  any member SET ROLE to its group, so settings on a group protect nothing. Applications log in as their own
  LOGIN roles, members of one group, which carry the server-side timeouts (LOGIN_SETTINGS).
- A statement is run (or printed) only when the cluster differs from the specification, so a deployer without
  CREATEROLE needs nothing once a DBA created the roles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from sigledger.core.errors import MigrationError
from sigledger.migrate.settings import OWNER_ROLE

GROUPS: dict[str, str] = {
    "app": "sigledger_app",
    "readonly": "sigledger_readonly",
    "admin": "sigledger_admin",
    "graph": "sigledger_graph",
}
# (group, member): sigledger_admin may do everything sigledger_app may.
MEMBERSHIPS: tuple[tuple[str, str], ...] = (("sigledger_app", "sigledger_admin"),)

# Server-side safety nets on each login, by the group it joins. Every login that calls API functions has a
# statement_timeout; a client that leaks a transaction is cut off by idle_in_transaction_session_timeout.
LOGIN_SETTINGS: dict[str, dict[str, str]] = {
    "app": {"statement_timeout": "30s", "lock_timeout": "10s", "idle_in_transaction_session_timeout": "60s"},
    "readonly": {
        "statement_timeout": "60s",
        "idle_in_transaction_session_timeout": "60s",
        "default_transaction_read_only": "on",
    },
    # reconciliation and sweeps read more than an application call does
    "admin": {
        "statement_timeout": "5min",
        "lock_timeout": "10s",
        "idle_in_transaction_session_timeout": "60s",
    },
    "graph": {"statement_timeout": "60s", "idle_in_transaction_session_timeout": "60s"},
}

ALL_ROLES = (OWNER_ROLE, *GROUPS.values())


@dataclass
class RoleState:
    name: str
    exists: bool
    can_login: bool = False
    settings: list[str] = field(default_factory=list)
    members: set[str] = field(default_factory=set)
    login_members: list[str] = field(default_factory=list)
    sessions: int = 0


@dataclass
class RoleAction:
    """One statement that brings the cluster to the specification."""

    sql: str
    why: str
    role: str  # the role created, altered, or granted (what the login must be allowed to manage)
    # a group that applications may still log in as is being made NOLOGIN
    retires_login_of: str | None = None


def read_roles(conn: psycopg.Connection[Any]) -> dict[str, RoleState]:
    rows = conn.execute(
        """SELECT r.rolname, r.rolcanlogin,
                  coalesce((SELECT array_agg(c ORDER BY c) FROM pg_db_role_setting s, unnest(s.setconfig) c
                             WHERE s.setrole = r.oid AND s.setdatabase = 0), '{}'),
                  coalesce((SELECT array_agg(m.rolname ORDER BY m.rolname) FROM pg_auth_members a
                              JOIN pg_roles m ON m.oid = a.member WHERE a.roleid = r.oid), '{}'),
                  coalesce((SELECT array_agg(m.rolname ORDER BY m.rolname) FROM pg_auth_members a
                              JOIN pg_roles m ON m.oid = a.member WHERE a.roleid = r.oid AND m.rolcanlogin
                              AND m.rolname <> ALL (%(all)s)), '{}'),
                  (SELECT count(*) FROM pg_stat_activity s WHERE s.usesysid = r.oid AND s.pid <> pg_backend_pid())
             FROM pg_roles r WHERE r.rolname = ANY (%(all)s)""",
        {"all": list(ALL_ROLES)},
    ).fetchall()
    found = {
        r[0]: RoleState(r[0], True, bool(r[1]), list(r[2]), set(r[3]), list(r[4]), int(r[5])) for r in rows
    }
    return {name: found.get(name, RoleState(name, False)) for name in ALL_ROLES}


def _ident(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def role_actions(
    states: dict[str, RoleState], deployer: str | None = None, *, deployer_is_member: bool = True
) -> list[RoleAction]:
    """The statements that make the cluster match the specification (none when it already does)."""
    actions: list[RoleAction] = []
    for name in ALL_ROLES:
        state = states[name]
        if not state.exists:
            actions.append(RoleAction(f"CREATE ROLE {name} NOLOGIN", f"role {name} does not exist", name))
            continue
        if state.can_login:
            actions.append(
                RoleAction(
                    f"ALTER ROLE {name} NOLOGIN",
                    f"{name} can log in; it is a group now (applications log in as member logins)",
                    name,
                    retires_login_of=name if name != OWNER_ROLE else None,
                )
            )
        if state.settings:
            actions.append(
                RoleAction(
                    f"ALTER ROLE {name} RESET ALL",
                    f"{name} carries settings ({', '.join(state.settings)}) that no login receives; they "
                    "belong on the member logins",
                    name,
                )
            )
    for group, member in MEMBERSHIPS:
        if member not in states[group].members:
            actions.append(
                RoleAction(f"GRANT {group} TO {member}", f"{member} must be a member of {group}", group)
            )
    if deployer is not None and not deployer_is_member:
        actions.append(
            RoleAction(
                f"GRANT {OWNER_ROLE} TO {_ident(deployer)}",
                f"the deployer {deployer} must be a member of {OWNER_ROLE} (migrations run as it)",
                OWNER_ROLE,
            )
        )
    return actions


def apply_actions(conn: psycopg.Connection[Any], actions: list[RoleAction], log: Any) -> None:
    for action in actions:
        log(f"roles: {action.sql}  ({action.why})")
        conn.execute(action.sql.encode("utf-8"))


# ---- SQL for a DBA --------------------------------------------------------------------------------------------


def _do(condition: str, statement: str) -> str:
    return f"DO $$ BEGIN IF {condition} THEN {statement}; END IF; END $$;"


def roles_sql(
    deployer: str | None = None, database: str | None = None, logins: dict[str, str] | None = None
) -> str:
    """An idempotent script that creates or corrects every role (a statement runs only when needed); with a
    deployer and database, what that login needs; with logins (name -> group), member logins."""
    lines = [
        "-- sigledger roles: run once per cluster as a superuser or a role with CREATEROLE (idempotent).",
        "-- Groups hold privileges only (NOLOGIN); applications log in as member logins with their own timeouts.",
    ]
    for name in ALL_ROLES:
        lit = sql.Literal(name).as_string(None)
        lines.append(
            _do(f"NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit})", f"CREATE ROLE {name} NOLOGIN")
        )
        lines.append(
            _do(
                f"EXISTS (SELECT FROM pg_roles WHERE rolname = {lit} AND rolcanlogin)",
                f"ALTER ROLE {name} NOLOGIN",
            )
        )
        lines.append(
            _do(
                "EXISTS (SELECT FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                f"WHERE r.rolname = {lit} AND s.setdatabase = 0)",
                f"ALTER ROLE {name} RESET ALL",
            )
        )
    for group, member in MEMBERSHIPS:
        lines.append(_do(f"NOT pg_has_role('{member}', '{group}', 'MEMBER')", f"GRANT {group} TO {member}"))
    if deployer:
        lit = sql.Literal(deployer).as_string(None)
        lines.append(f"-- the deployer {deployer}: a member of the owner role (migrations run as it)")
        lines.append(
            _do(
                f"NOT pg_has_role({lit}, '{OWNER_ROLE}', 'MEMBER')",
                f"GRANT {OWNER_ROLE} TO {_ident(deployer)}",
            )
        )
    if database:
        who = _ident(deployer) if deployer else "<deployer>"
        lines.append(
            f"-- the deployer creates the schemas sigledger and sigledger_meta in database {database} (first deploy)"
        )
        lines.append(f"GRANT CONNECT, CREATE ON DATABASE {_ident(database)} TO {who};")
    for login, group in (logins or {}).items():
        lines.append(f"-- login {login}, member of {GROUPS[group]}")
        lines.extend(login_sql(login, group))
    return "\n".join(lines) + "\n"


def login_sql(name: str, group: str, password: str | None = None) -> list[str]:
    """Statements that create (or correct) a LOGIN member of a group with the group's login settings."""
    if group not in GROUPS:
        raise MigrationError(f"unknown group '{group}' (one of: {', '.join(GROUPS)})")
    if name in ALL_ROLES or name.startswith("pg_"):
        raise MigrationError(f"'{name}' cannot be a login: it is a sigledger group or a reserved name")
    ident, lit = _ident(name), sql.Literal(name).as_string(None)
    out = [
        _do(f"NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit})", f"CREATE ROLE {ident} LOGIN"),
        _do(f"NOT pg_has_role({lit}, '{GROUPS[group]}', 'MEMBER')", f"GRANT {GROUPS[group]} TO {ident}"),
    ]
    out.extend(
        f"ALTER ROLE {ident} SET {k} = {sql.Literal(v).as_string(None)};"
        for k, v in LOGIN_SETTINGS[group].items()
    )
    if password is not None:
        out.append(f"ALTER ROLE {ident} PASSWORD {sql.Literal(password).as_string(None)};")
    return out


def create_login(conn: psycopg.Connection[Any], name: str, group: str, password: str | None = None) -> None:
    """Create (or correct) a login as `login_sql` prints it, in one transaction."""
    states = read_roles(conn)
    if not states[GROUPS[group]].exists:
        raise MigrationError(
            f"group {GROUPS[group]} does not exist: run `sigledger migrate up` (or `sigledger roles sql` as a DBA) first"
        )
    with conn.transaction():
        for statement in login_sql(name, group, password):
            conn.execute(statement.encode("utf-8"))
