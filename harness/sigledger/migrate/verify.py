"""`verify`: the database is what the code says it is. Each problem is one line; none means verified.

- history: no drifted, unknown or abandoned partially applied migration;
- each applied migration's verify script (read-only, rolled back) returns nothing and raises nothing;
- at head, every repeatable file is recorded at its current checksum and the functions and views it defines
  exist;
- ownership: every object of sigledger and sigledger_meta belongs to sigledger_owner;
- privileges: no table or sequence privilege for PUBLIC or the groups, views readable by app and readonly,
  EXECUTE exactly as the audience list of 900_grants.sql says (sigledger._api_audience());
- roles: as specified (NOLOGIN groups without settings, memberships);
- logins: each login that is a direct member of a sigledger group has the settings `role create-login` gives it
  (a member login may `ALTER ROLE <itself> SET statement_timeout = 0`, which persists for its later sessions);
- every index valid and every constraint validated.
"""

from __future__ import annotations

from typing import Any

import psycopg
from pglast import ast

from sigledger.migrate import history, ownership, roles
from sigledger.migrate.files import Migration, Repeatable, version_key
from sigledger.migrate.history import META_SCHEMA, Status

Conn = psycopg.Connection[Any]
GROUP_ROLES = tuple(roles.GROUPS.values())


def problems(
    conn: Conn, status: Status, migrations: list[Migration], repeatables: list[Repeatable]
) -> list[str]:
    found: list[str] = []
    found += [f"drifted: {label}" for label in status.drifted]
    found += [f"unknown to this code: {label}" for label in status.unknown]
    found += [f"partially applied: {label}" for label in status.in_progress]
    found += _verify_scripts(conn, migrations)
    if not status.pending and not status.in_progress:
        found += _repeatables(conn, repeatables)
    for schema in (META_SCHEMA, "sigledger"):
        found += [
            f"owner: {o.kind} {o.ident} belongs to {o.owner} ({o.fix})"
            for o in ownership.foreign_objects(conn, schema)
        ]
    if conn.execute("SELECT to_regnamespace('sigledger') IS NOT NULL").fetchone() == (True,):
        found += _privileges(conn)
        found += _catalog(conn)
    found += [f"roles: {a.why} (fix: {a.sql})" for a in roles.role_actions(roles.read_roles(conn))]
    found += _login_settings(conn)
    return found


def _login_settings(conn: Conn) -> list[str]:
    """Logins of the sigledger groups whose settings at login in this database (role-wide, overridden by
    role-in-database) differ from the group's LOGIN_SETTINGS; a login in several groups is held to the first
    in roles.GROUPS order. Settings the specification does not name are not checked."""
    rows = conn.execute(
        """SELECT m.rolname, g.rolname,
                  coalesce((SELECT array_agg(c ORDER BY s.setdatabase) FROM pg_db_role_setting s, unnest(s.setconfig) c
                             WHERE s.setrole = m.oid
                               AND s.setdatabase IN (0, (SELECT oid FROM pg_database
                                                          WHERE datname = current_database()))), '{}')
             FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
            WHERE g.rolname = ANY (%s) AND m.rolcanlogin AND m.rolname <> ALL (%s)
            ORDER BY m.rolname""",
        (list(GROUP_ROLES), list(roles.ALL_ROLES)),
    ).fetchall()
    group_of: dict[str, tuple[str, list[str]]] = {}
    order = list(roles.GROUPS.values())
    for login, group, config in rows:
        if login not in group_of or order.index(group) < order.index(group_of[login][0]):
            group_of[login] = (group, list(config))
    found = []
    for login, (group_role, config) in sorted(group_of.items()):
        group = next(k for k, v in roles.GROUPS.items() if v == group_role)
        actual = dict(c.split("=", 1) for c in config)  # role-wide first, then this database's: it wins
        for key, want in sorted(roles.LOGIN_SETTINGS[group].items()):
            have = actual.get(key)
            if have != want:
                what = "is not set" if have is None else f"is {have}"
                found.append(
                    f"login {login} ({group_role}): {key} {what}, role create-login sets {want} "
                    f"(fix: sigledger role create-login {login} --as {group})"
                )
    return found


def _verify_scripts(conn: Conn, migrations: list[Migration]) -> list[str]:
    applied = {version_key(v) for v, row in history.applied_rows(conn).items() if row.status == "applied"}
    return [p for m in migrations if m.key in applied for p in verify_script(conn, m)]


def verify_script(conn: Conn, migration: Migration) -> list[str]:
    """Run one migration's verify script read-only (rolled back): its rows and errors are the problems."""
    if migration.verify is None:
        return []
    found: list[str] = []
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute("SET LOCAL search_path TO sigledger, public")
            for stmt in migration.verify.statements:
                cur = conn.execute(stmt.sql.encode("utf-8"))
                if cur.description and (rows := cur.fetchall()):
                    found.append(f"{migration.verify.path.name}:{stmt.line}: returned {rows[:3]}")
    except psycopg.Error as exc:
        found.append(f"{migration.verify.path.name}: {exc.sqlstate}: {str(exc).strip()}")
    return found


def _defined(rep: Repeatable) -> list[tuple[str, str]]:
    """(kind, name) of the functions and views a repeatable file creates in schema sigledger."""
    out = []
    for stmt in rep.file.statements:
        node = stmt.node
        if isinstance(node, ast.CreateFunctionStmt) and node.funcname:
            parts = [p.sval for p in node.funcname]
            if len(parts) == 1 or parts[0] == "sigledger":
                out.append(("function", parts[-1]))
        elif (
            isinstance(node, ast.ViewStmt)
            and node.view is not None
            and node.view.schemaname in (None, "sigledger")
        ):
            out.append(("view", node.view.relname))
    return out


def _repeatables(conn: Conn, repeatables: list[Repeatable]) -> list[str]:
    found: list[str] = []
    recorded = history.repeatable_checksums(conn)
    functions = {
        r[0]
        for r in conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = to_regnamespace('sigledger')"
        ).fetchall()
    }
    views = {
        r[0]
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace('sigledger') AND relkind IN ('v', 'm')"
        ).fetchall()
    }
    for rep in repeatables:
        if rep.name not in recorded:
            found.append(f"repeatable {rep.name} was never applied")
            continue
        if recorded[rep.name] != rep.file.checksum:
            found.append(
                f"repeatable {rep.name} is applied at another checksum (changed file not re-applied)"
            )
        for kind, name in _defined(rep):
            if name not in (functions if kind == "function" else views):
                found.append(f"repeatable {rep.name}: {kind} sigledger.{name} is missing")
    return found


def _privileges(conn: Conn) -> list[str]:
    found: list[str] = []
    grantees = ["public", *GROUP_ROLES]
    rows = conn.execute(
        """SELECT c.oid::regclass::text, c.relkind, coalesce(g.rolname, 'public'), a.privilege_type
             FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
             LEFT JOIN pg_roles g ON g.oid = a.grantee
            WHERE c.relnamespace = 'sigledger'::regnamespace AND c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
              AND coalesce(g.rolname, 'public') = ANY (%s)""",
        (grantees,),
    ).fetchall()
    for rel, relkind, grantee, privilege in rows:
        readable_view = (
            relkind in ("v", "m")
            and privilege == "SELECT"
            and grantee in ("sigledger_app", "sigledger_readonly")
        )
        if not readable_view:
            found.append(f"privilege: {grantee} has {privilege} on {rel}")
    missing_views = conn.execute(
        """SELECT c.oid::regclass::text, r FROM pg_class c CROSS JOIN unnest(ARRAY['sigledger_app', 'sigledger_readonly']) r
            WHERE c.relnamespace = 'sigledger'::regnamespace AND c.relkind IN ('v', 'm')
              AND NOT has_table_privilege(r, c.oid, 'SELECT')"""
    ).fetchall()
    found += [f"privilege: {role} cannot read view {view}" for view, role in missing_views]
    if conn.execute("SELECT to_regproc('sigledger._api_audience') IS NOT NULL").fetchone() != (True,):
        return [*found, "privilege: sigledger._api_audience() is missing (900_grants.sql not applied)"]
    diff = conn.execute(
        """WITH granted AS (
               SELECT p.oid::regprocedure::text AS fn, coalesce(g.rolname, 'public') AS grantee
                 FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a LEFT JOIN pg_roles g ON g.oid = a.grantee
                WHERE p.pronamespace = 'sigledger'::regnamespace AND a.privilege_type = 'EXECUTE'
                  AND coalesce(g.rolname, 'public') = ANY (%(grantees)s)),
           wanted AS (
               SELECT p.oid::regprocedure::text AS fn, 'sigledger_' || r AS grantee
                 FROM sigledger._api_audience() x JOIN pg_proc p ON p.proname = x.fn
                      AND p.pronamespace = 'sigledger'::regnamespace
                      CROSS JOIN unnest(x.audience) r)
           SELECT 'unexpected', fn, grantee FROM (SELECT * FROM granted EXCEPT SELECT * FROM wanted) u
           UNION ALL
           SELECT 'missing', fn, grantee FROM (SELECT * FROM wanted EXCEPT SELECT * FROM granted) m
           ORDER BY 2, 3""",
        {"grantees": grantees},
    ).fetchall()
    found += [f"privilege: {what} EXECUTE on {fn} for {grantee}" for what, fn, grantee in diff]
    public = conn.execute(
        """SELECT p.oid::regprocedure::text FROM pg_proc p
            WHERE p.pronamespace = 'sigledger'::regnamespace AND p.proacl IS NULL"""
    ).fetchall()
    found += [f"privilege: {fn} has default privileges (EXECUTE for PUBLIC)" for (fn,) in public]
    return found


def _catalog(conn: Conn) -> list[str]:
    found = [
        f"INVALID index sigledger.{name}"
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relnamespace = 'sigledger'::regnamespace AND NOT (i.indisvalid AND i.indisready)"
        ).fetchall()
    ]
    found += [
        f"constraint {name} on {rel} is not validated (NOT VALID)"
        for rel, name in conn.execute(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint "
            "WHERE connamespace = 'sigledger'::regnamespace AND NOT convalidated"
        ).fetchall()
    ]
    return found
