"""The plpgsql_check gate: every plpgsql function of the sigledger schema, trigger functions checked with
each table they are attached to, extension-owned functions skipped. Any error fails the run."""

from __future__ import annotations

import psycopg

CHECK = """
WITH fns AS (
    SELECT p.oid, p.oid::regprocedure::text AS fn, p.prorettype = 'trigger'::regtype AS is_trigger
      FROM pg_proc p
      JOIN pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
     WHERE p.pronamespace = 'sigledger'::regnamespace
       AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                                 AND d.deptype = 'e')
), targets AS (
    SELECT fns.oid, fns.fn, 0::oid AS relid FROM fns WHERE NOT is_trigger
    UNION ALL
    SELECT fns.oid, fns.fn, t.tgrelid FROM fns JOIN pg_trigger t ON t.tgfoid = fns.oid WHERE is_trigger
)
SELECT targets.fn, targets.relid::regclass::text, r.level, r.message, r.lineno, r.statement, r.sqlstate
  FROM targets
 CROSS JOIN LATERAL plpgsql_check_function_tb(targets.oid, targets.relid, fatal_errors => false) r
 ORDER BY 1, 2
"""


def test_no_plpgsql_errors(conn: psycopg.Connection) -> None:
    rows = conn.execute(CHECK).fetchall()
    errors = [r for r in rows if r[2] == "error"]
    report = "\n".join(
        f"{fn} [{rel}] line {line} ({stmt}): {level} {sqlstate} {msg}"
        for fn, rel, level, msg, line, stmt, sqlstate in errors
    )
    assert not errors, f"plpgsql_check found errors:\n{report}"


def test_gate_sees_our_functions(conn: psycopg.Connection) -> None:
    """The gate is not vacuous: a broken function and a broken trigger function (checked with its table)
    are both reported."""
    conn.execute("""CREATE FUNCTION sigledger._broken() RETURNS int LANGUAGE plpgsql AS
                    $$ BEGIN RETURN (SELECT no_such_column FROM sigledger.outbox LIMIT 1); END $$""")
    conn.execute("""CREATE OR REPLACE FUNCTION sigledger._increment_agent_version() RETURNS trigger
                    LANGUAGE plpgsql AS $$ BEGIN NEW.no_such_column := 1; RETURN NEW; END $$""")
    errors = [r for r in conn.execute(CHECK).fetchall() if r[2] == "error"]
    assert any(r[0].startswith("sigledger._broken") for r in errors), errors
    assert any(
        r[0].startswith("sigledger._increment_agent_version") and r[1] == "sigledger.agent_registry"
        for r in errors
    ), errors
