"""Who owns what: every object of the schemas sigledger and sigledger_meta belongs to sigledger_owner, so that
any member of it can run every runner command. Objects made by someone else (a first deployer's sigledger_meta,
a schema applied with psql) are taken over when the connecting login may, else refused with the exact SQL a DBA
runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from sigledger.migrate.settings import OWNER_ROLE

# Objects whose owner can be changed on their own: the schema, tables (their indexes, row types and identity or
# serial sequences follow them), views, free-standing sequences, functions, and free-standing types.
_OBJECTS = """
SELECT kind, ident, owner, fixable FROM (
    SELECT 'SCHEMA' AS kind, quote_ident(n.nspname) AS ident, n.nspowner AS owner,
           'pg_namespace'::regclass AS classid, n.oid AS objid
      FROM pg_namespace n WHERE n.nspname = %(schema)s
    UNION ALL
    SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                          WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
           c.oid::regclass::text, c.relowner, 'pg_class'::regclass, c.oid
      FROM pg_class c
     WHERE c.relnamespace = to_regnamespace(%(schema)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
    UNION ALL
    SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
           p.oid::regprocedure::text, p.proowner, 'pg_proc'::regclass, p.oid
      FROM pg_proc p WHERE p.pronamespace = to_regnamespace(%(schema)s)
    UNION ALL
    SELECT 'TYPE', t.oid::regtype::text, t.typowner, 'pg_type'::regclass, t.oid
      FROM pg_type t WHERE t.typnamespace = to_regnamespace(%(schema)s) AND t.typtype IN ('e', 'd', 'r', 'm')
) o
CROSS JOIN LATERAL (SELECT pg_has_role(current_user, o.owner, 'USAGE')
                           AND pg_has_role(current_user, %(owner)s, 'MEMBER') AS fixable) f
WHERE o.owner <> (SELECT oid FROM pg_roles WHERE rolname = %(owner)s)
  -- an extension's members belong to the extension's owner, whoever that is
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = o.classid AND d.objid = o.objid AND d.deptype = 'e')
ORDER BY o.kind = 'SCHEMA' DESC, o.kind, o.ident
"""


@dataclass(frozen=True)
class Foreign:
    """An object of a sigledger schema that sigledger_owner does not own."""

    kind: str
    ident: str
    owner: str
    fixable: bool  # the connecting login may hand it over (it owns it, and is a member of sigledger_owner)

    @property
    def fix(self) -> str:
        return f"ALTER {self.kind} {self.ident} OWNER TO {OWNER_ROLE};"


def foreign_objects(conn: psycopg.Connection[Any], schema: str) -> list[Foreign]:
    """Objects of `schema` not owned by sigledger_owner (empty when the role or the schema does not exist)."""
    row = conn.execute(
        "SELECT to_regnamespace(%s) IS NOT NULL AND EXISTS (SELECT FROM pg_roles WHERE rolname = %s)",
        (schema, OWNER_ROLE),
    ).fetchone()
    if not (row and row[0]):
        return []
    rows = conn.execute(_OBJECTS, {"schema": schema, "owner": OWNER_ROLE}).fetchall()
    owners = dict(conn.execute("SELECT oid, rolname FROM pg_roles").fetchall())
    return [
        Foreign(kind, ident, owners.get(owner, str(owner)), bool(fixable))
        for kind, ident, owner, fixable in rows
    ]


def take_over(conn: psycopg.Connection[Any], objects: list[Foreign], log: Any) -> None:
    """Hand every object over to sigledger_owner in one transaction (all are fixable)."""
    with conn.transaction():
        for obj in objects:
            log(f"ownership: {obj.fix}  (was {obj.owner})")
            conn.execute(obj.fix.encode("utf-8"))


def refusal(objects: list[Foreign], schema: str) -> str:
    blocked = [o for o in objects if not o.fixable]
    owners = sorted({o.owner for o in blocked})
    lines = [
        f"{len(blocked)} object(s) of schema {schema} belong to {', '.join(owners)}, not {OWNER_ROLE}, and this "
        f"login cannot hand them over; run as {' or '.join(owners)} or a superuser:",
        *(f"  {o.fix}" for o in blocked[:50]),
    ]
    if len(blocked) > 50:
        lines.append(f"  ... and {len(blocked) - 50} more (`sigledger migrate preflight --json` lists all)")
    return "\n".join(lines)
