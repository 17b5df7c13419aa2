"""Plans: with realistic row counts and fresh statistics, the statements that resolve_entity, ingestion,
the read API and merge_entities run *inside* the functions use index scans on entity_aliases,
signal_entities, signals and entities.

The plans are the real ones: auto_explain (log_nested_statements) reports every statement the PL/pgSQL code
runs, and client_min_messages = log brings those reports to this connection as notices."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pytest_postgresql.executors import PostgreSQLExecutor

from tests.conftest import clone_database, drop_database, make_dsn

ENTITIES = 50_000  # 100,000 aliases, 100,000 signals, 300,000 signal_entities rows
WATCHED = {"entity_aliases", "signal_entities", "signals", "entities"}


@pytest.fixture(scope="module")
def loaded_dsn(pg: PostgreSQLExecutor, template_db: str) -> Iterator[str]:
    """One database for the module (loading it is the expensive part), loaded once and analyzed."""
    name = clone_database(pg, template_db, prefix="plans")
    try:
        with psycopg.connect(make_dsn(pg, name), autocommit=True) as conn:
            _load(conn)
        yield make_dsn(pg, name)
    finally:
        drop_database(pg, name)


@pytest.fixture
def loaded(loaded_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(loaded_dsn, autocommit=True) as conn:
        yield conn


def _load(conn: psycopg.Connection) -> None:
    n = ENTITIES
    conn.execute(
        f"INSERT INTO sigledger.entities (name) SELECT 'Entity ' || i FROM generate_series(1, {n}) i"
    )
    conn.execute(
        "INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id) "
        "SELECT a, e.id FROM sigledger.entities e, LATERAL (VALUES (e.name), ('alt ' || e.name)) v (a)"
    )
    conn.execute(
        "INSERT INTO sigledger.signals (source, external_id, occurred_at) "
        f"SELECT 'bulk', i::text, '2026-01-01'::timestamptz + i * interval '1 minute' FROM generate_series(1, {2 * n}) i"
    )
    # three distinct entities per signal, joined by hash on a numbered copy of both tables
    conn.execute(
        "INSERT INTO sigledger.signal_entities (signal_id, entity_id) "
        "SELECT s.id, e.id "
        "FROM (SELECT id, external_id::int AS n FROM sigledger.signals) s "
        "CROSS JOIN (VALUES (0), (1), (2)) k (k) "
        "JOIN (SELECT id, substr(name, 8)::int AS n FROM sigledger.entities) e "
        f"  ON e.n = ((s.n * 7 + k.k * {n // 3}) % {n}) + 1"
    )
    conn.execute("ANALYZE")


@pytest.fixture
def plans(loaded: psycopg.Connection) -> Iterator[list[dict[str, Any]]]:
    captured: list[dict[str, Any]] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if text.startswith("duration:") and "{" in text:
            captured.append(json.loads(text[text.index("{") :]))

    loaded.add_notice_handler(on_notice)
    loaded.execute("LOAD 'auto_explain'")
    for setting, value in (
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_nested_statements", "on"),
        ("auto_explain.log_format", "json"),
        ("client_min_messages", "log"),
    ):
        loaded.execute("SELECT set_config(%s, %s, false)", (setting, value))
    yield captured
    loaded.remove_notice_handler(on_notice)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _scans(captured: list[dict[str, Any]], marker: str) -> list[tuple[str, str]]:
    """(node type, relation) of every scan on a watched table, in the nested plans whose SQL has marker."""
    out = []
    for report in captured:
        if marker not in report.get("Query Text", ""):
            continue
        for node in _nodes(report["Plan"]):
            if node.get("Relation Name") in WATCHED:
                out.append((node["Node Type"], node["Relation Name"]))
    return out


def _assert_index_only(scans: list[tuple[str, str]], table: str) -> None:
    """The table was read through an index, and never by a sequential scan (ModifyTable is the write)."""
    reads = [t for t, rel in scans if rel == table and t != "ModifyTable"]
    assert any(t in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan") for t in reads), (table, scans)
    assert "Seq Scan" not in reads, f"sequential scan on {table}: {scans}"


def test_resolve_entity_uses_the_alias_index(loaded: psycopg.Connection, plans: list[dict[str, Any]]) -> None:
    for _ in range(8):  # past the plan cache's first custom plans: the generic plan must be an index scan too
        plans.clear()
        row = loaded.execute("SELECT sigledger.resolve_entity('ALT entity 4242')").fetchone()
        assert row is not None and row[0] is not None
        _assert_index_only(_scans(plans, "entity_aliases a WHERE a.alias_key"), "entity_aliases")


def test_signal_entities_lookups_use_indexes(loaded: psycopg.Connection, plans: list[dict[str, Any]]) -> None:
    entity = loaded.execute("SELECT sigledger.resolve_entity('Entity 77')").fetchone()
    assert entity is not None
    plans.clear()
    rows = loaded.execute("SELECT * FROM sigledger.entity_signals_of(%s)", (entity[0],)).fetchall()
    assert rows
    _assert_index_only(
        _scans(plans, "FROM sigledger.signal_entities se JOIN sigledger.signals s"), "signal_entities"
    )

    # by signal: the outbox payload of ingestion reads signal_entities by signal_id
    plans.clear()
    loaded.execute(
        "SELECT * FROM sigledger.ingest_signal('plan', 'p-1', now(), '{}', ARRAY['Entity 5', 'alt Entity 6', 'Entity 7'])"
    )
    scans = [s for r in plans for s in _scans([r], "")]
    for table in ("signal_entities", "entity_aliases", "signals", "entities"):
        _assert_index_only(scans, table)


def test_merge_entities_uses_indexes(loaded: psycopg.Connection, plans: list[dict[str, Any]]) -> None:
    ids = [
        loaded.execute("SELECT sigledger.resolve_entity(%s)", (f"Entity {n}",)).fetchone()[0]
        for n in (10, 11, 12)
    ]
    plans.clear()
    loaded.execute("SELECT * FROM sigledger.merge_entities(%s, %s::uuid[])", (ids[0], ids[1:]))
    scans = [s for r in plans for s in _scans([r], "")]
    for table in ("signal_entities", "entity_aliases", "entities"):
        _assert_index_only(scans, table)
