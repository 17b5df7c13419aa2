"""Sizes (issue 11, item 8): every array and batch argument has a documented bound, an error message quotes at
most ~200 characters of a bad value, and docs/errors.md lists every SQLSTATE a caller can receive."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

ERRORS_DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
LONGEST_MESSAGE = 600  # the fixed text of a message plus ~200 characters of the value


def _error(conn: psycopg.Connection, sql: str, args: tuple = ()) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info, conn.transaction():
        conn.execute(sql, args)
    return info.value


def test_a_huge_name_gives_a_short_message(conn: psycopg.Connection) -> None:
    huge = "x" * 100_000
    for sql in (
        "SELECT sigledger.create_entity(%s)",
        "SELECT sigledger.resolve_entity(%s)",
        "SELECT sigledger.find_agent(%s)",
        "SELECT sigledger.create_opportunity(%s)",
        "SELECT sigledger.ingest_signal(%s, 'x', now())",
        "SELECT sigledger.create_opportunity('t', p_status => %s)",
        "SELECT sigledger.ingest_signals('[]', %s)",
    ):
        err = _error(conn, sql, (huge,))
        assert err.sqlstate in ("22023", "P0002"), (sql, err.sqlstate)
        assert len(str(err)) < LONGEST_MESSAGE, (sql, len(str(err)))


def test_id_lists_are_bounded_and_quoted_short(conn: psycopg.Connection) -> None:
    target = conn.execute("SELECT sigledger.create_entity('Target')").fetchone()[0]
    opp = conn.execute("SELECT sigledger.create_opportunity('Target')").fetchone()[0]
    many = [str(uuid.uuid4()) for _ in range(100_000)]
    for sql, args in (
        ("SELECT sigledger.merge_entities(%s, %s::uuid[])", (target, many)),
        ("SELECT sigledger.merge_opportunities(%s, %s::uuid[])", (opp, many)),
        ("SELECT sigledger.link_signals(%s, %s::uuid[])", (opp, many)),
    ):
        err = _error(conn, sql, args)
        assert err.sqlstate == "22023" and "at most" in str(err), (sql, err.sqlstate, str(err)[:300])
        assert len(str(err)) < LONGEST_MESSAGE, (sql, len(str(err)))
    # within the bound, unknown ids are named, a few of them
    some = many[:500]
    for sql, args in (
        ("SELECT sigledger.merge_entities(%s, %s::uuid[])", (target, some)),
        ("SELECT sigledger.merge_opportunities(%s, %s::uuid[])", (opp, some)),
        ("SELECT sigledger.link_signals(%s, %s::uuid[])", (opp, some)),
    ):
        err = _error(conn, sql, args)
        assert err.sqlstate == "P0002", (sql, err.sqlstate)
        assert len(str(err)) < LONGEST_MESSAGE, (sql, len(str(err)))


def test_arrays_of_names_and_thresholds_are_bounded(conn: psycopg.Connection) -> None:
    agent = conn.execute("SELECT sigledger.create_agent('sized', 10)").fetchone()[0]
    err = _error(
        conn, "SELECT sigledger.set_budget(%s, p_alert_thresholds => %s::numeric[])", (agent, [0.5] * 100_000)
    )
    assert err.sqlstate == "22023" and len(str(err)) < LONGEST_MESSAGE
    err = _error(conn, "SELECT sigledger.create_entity('Many', %s::text[])", ([f"a{i}" for i in range(101)],))
    assert err.sqlstate == "22023" and "at most 100" in str(err)
    err = _error(
        conn,
        "SELECT sigledger.ingest_signal('s', 'e', now(), '{}', %s::text[])",
        ([f"m{i}" for i in range(201)],),
    )
    assert err.sqlstate == "22023" and "200" in str(err)


def test_aliases_per_entity_are_bounded(conn: psycopg.Connection) -> None:
    entity = conn.execute("SELECT sigledger.create_entity('Crowded')").fetchone()[0]
    conn.execute(
        "INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id) "
        "SELECT 'crowded ' || g, %s FROM generate_series(1, 999) g",
        (entity,),
    )
    err = _error(conn, "SELECT sigledger.add_alias(%s, 'one too many')", (entity,))
    assert err.sqlstate == "54000" and "1000" in str(err), str(err)
    other = conn.execute("SELECT sigledger.create_entity('Other', ARRAY['o1', 'o2'])").fetchone()[0]
    err = _error(conn, "SELECT sigledger.merge_entities(%s, ARRAY[%s]::uuid[])", (entity, other))
    assert err.sqlstate == "54000", str(err)


def test_opportunity_value_that_rounds_over_the_bound_is_named(conn: psycopg.Connection) -> None:
    err = _error(conn, "SELECT sigledger.create_opportunity('Big', p_value_usd => 999999999999.995)")
    assert err.sqlstate == "22003"
    assert "value_usd" in str(err) and "999999999999.995" in str(err), str(err)


def test_errors_doc_lists_what_postgresql_raises_on_arguments() -> None:
    table = ERRORS_DOC.read_text()
    missing = [
        c
        for c in ("22008", "22015", "22021", "22P05", "54000", "54001", "22007", "22P02")
        if f"### `{c}`" not in table
    ]
    assert not missing, missing
