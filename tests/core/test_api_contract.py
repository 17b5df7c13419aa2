"""The SQL API contract (docs/CONVENTIONS.md), checked on the migrated schema so every later function obeys it:
API functions are SECURITY DEFINER with a pinned search_path and a COMMENT; internal ones are not callable by
the app role; the app role cannot write any table."""

from __future__ import annotations

import psycopg
import pytest

API_FUNCTIONS = """
SELECT p.oid::regprocedure::text, p.prosecdef, coalesce(array_to_string(p.proconfig, ','), ''),
       obj_description(p.oid, 'pg_proc')
  FROM pg_proc p
 WHERE p.pronamespace = 'sigledger'::regnamespace AND p.proname !~ '^_'
   AND p.prorettype <> 'trigger'::regtype AND p.prokind IN ('f', 'p')
"""


def test_api_functions_are_security_definer_with_pinned_search_path(conn: psycopg.Connection) -> None:
    bad = [
        (fn, secdef, cfg)
        for fn, secdef, cfg, _ in conn.execute(API_FUNCTIONS).fetchall()
        if not secdef or "search_path=sigledger, pg_temp" not in cfg
    ]
    assert not bad, f"API functions must be SECURITY DEFINER with SET search_path = sigledger, pg_temp: {bad}"


def test_api_functions_are_documented(conn: psycopg.Connection) -> None:
    undocumented = [fn for fn, _, _, comment in conn.execute(API_FUNCTIONS).fetchall() if not comment]
    assert not undocumented, f"COMMENT ON FUNCTION missing for: {undocumented}"


def test_every_function_pins_search_path(conn: psycopg.Connection) -> None:
    rows = conn.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'sigledger'::regnamespace
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
           AND NOT coalesce(array_to_string(p.proconfig, ',') LIKE '%search_path=%', false)""").fetchall()
    assert not rows, f"functions without a pinned search_path: {rows}"


def test_public_cannot_execute_internal_functions(conn: psycopg.Connection) -> None:
    rows = conn.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'sigledger'::regnamespace AND p.proname ~ '^_'
           AND (has_function_privilege('sigledger_app', p.oid, 'EXECUTE')
                OR has_function_privilege('sigledger_readonly', p.oid, 'EXECUTE'))
           AND NOT has_function_privilege('sigledger_graph', p.oid, 'EXECUTE')""").fetchall()
    assert not rows, f"internal functions executable by the app/readonly role: {rows}"


ROLES = ("sigledger_app", "sigledger_readonly", "sigledger_admin", "sigledger_graph")


def test_every_api_function_is_granted_to_some_role(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        API_FUNCTIONS.replace("SELECT p.oid::regprocedure::text,", "SELECT p.oid::regprocedure::text, p.oid,")
    ).fetchall()
    orphans = [
        r[0]
        for r in rows
        if not any(
            conn.execute("SELECT has_function_privilege(%s, %s::oid, 'EXECUTE')", (role, r[1])).fetchone()[0]
            for role in ROLES
        )
    ]
    assert not orphans, f"API functions no role may execute: {orphans}"


@pytest.mark.parametrize(
    "function",
    [
        "update_budget",
        "set_budget",
        "create_agent",
        "create_group_budget",
        "add_model_price",
        "reconcile_budgets",
        "expire_reservations",
    ],
)
def test_app_role_cannot_administer_budgets(conn: psycopg.Connection, function: str) -> None:
    """An application cannot raise its own budget, change prices, or repair spend."""
    oids = [r[0] for r in conn.execute("SELECT oid FROM pg_proc WHERE proname = %s", (function,)).fetchall()]
    assert oids, function
    for oid in oids:
        assert not conn.execute(
            "SELECT has_function_privilege('sigledger_app', %s::oid, 'EXECUTE')", (oid,)
        ).fetchone()[0]
        assert conn.execute(
            "SELECT has_function_privilege('sigledger_admin', %s::oid, 'EXECUTE')", (oid,)
        ).fetchone()[0]


def test_unclassified_api_function_stops_the_deployment(conn: psycopg.Connection) -> None:
    """900_grants.sql refuses an API function nobody classified (so none is exposed or hidden by accident)."""
    from sigledger.core.paths import functions_dir

    conn.execute(
        "CREATE FUNCTION sigledger.brand_new_api() RETURNS int LANGUAGE sql SECURITY DEFINER "
        "SET search_path = sigledger, pg_temp AS 'SELECT 1'"
    )
    with pytest.raises(psycopg.Error) as info:
        conn.execute((functions_dir() / "900_grants.sql").read_text())
    assert info.value.sqlstate == "0LP01"
    assert "brand_new_api" in str(info.value)


def _tables(conn: psycopg.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = 'sigledger'::regnamespace "
            "AND c.relkind IN ('r', 'p') ORDER BY 1"
        ).fetchall()
    ]


@pytest.mark.parametrize("role", ROLES)
def test_roles_hold_no_table_privilege(conn: psycopg.Connection, role: str) -> None:
    tables = _tables(conn)
    assert "sigledger.llm_cost_log" in tables and "sigledger.agent_registry" in tables
    granted = [
        (t, priv)
        for t in tables
        for priv in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
        if conn.execute("SELECT has_table_privilege(%s, %s, %s)", (role, t, priv)).fetchone()[0]
    ]
    assert not granted, f"{role} holds table privileges: {granted}"


def test_app_role_cannot_write_any_table(conn: psycopg.Connection, app_dsn: str) -> None:
    """A real login as sigledger_app: every direct write is refused with 42501."""
    tables = _tables(conn)
    with psycopg.connect(app_dsn, autocommit=True) as app:
        for table in tables:
            for statement in (
                f"DELETE FROM {table}",
                f"UPDATE {table} SET {_first_column(conn, table)} = {_first_column(conn, table)}",
                f"TRUNCATE {table}",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app.execute(statement)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("INSERT INTO sigledger.agent_registry (name) VALUES ('x')")


def _first_column(conn: psycopg.Connection, table: str) -> str:
    row = conn.execute(
        "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attnum > 0 AND NOT attisdropped AND attidentity = '' AND attgenerated = '' ORDER BY attnum LIMIT 1",
        (table,),
    ).fetchone()
    assert row
    return row[0]


def test_app_role_settings(conn: psycopg.Connection, app_dsn: str) -> None:
    with psycopg.connect(app_dsn) as app:
        timeout = app.execute("SHOW idle_in_transaction_session_timeout").fetchone()
        statement = app.execute("SHOW statement_timeout").fetchone()
    assert timeout and timeout[0] != "0"
    assert statement and statement[0] != "0"
