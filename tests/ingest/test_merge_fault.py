"""Fault: a merge whose backend is terminated in the middle of merge_opportunities leaves nothing changed.

The merge is stopped at a known point *after* it has moved links, merged fields and written tombstones: a
second session holds an ACCESS EXCLUSIVE lock on opportunity_merges, so the merge blocks on its history
insert with all its other writes done. Then pg_terminate_backend kills it."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from sigledger.core.errors import Unavailable, translate

SNAPSHOT = """
SELECT (SELECT coalesce(jsonb_agg(to_jsonb(o) ORDER BY o.id), '[]') FROM sigledger.opportunities o),
       (SELECT coalesce(jsonb_agg(jsonb_build_array(os.opportunity_id, os.signal_id)
                                  ORDER BY os.opportunity_id, os.signal_id), '[]') FROM sigledger.opportunity_signals os),
       (SELECT count(*) FROM sigledger.opportunity_merges),
       (SELECT count(*) FROM sigledger.outbox)
"""


def _setup(conn: psycopg.Connection) -> tuple[str, list[str]]:
    target = conn.execute("SELECT sigledger.create_opportunity('target', p_score => 10)").fetchone()[0]
    sources = [
        conn.execute("SELECT sigledger.create_opportunity(%s, 'd', 'open', 50)", (f"src{i}",)).fetchone()[0]
        for i in range(3)
    ]
    rows = conn.execute(
        "SELECT signal_id FROM sigledger.ingest_signals((SELECT jsonb_agg(jsonb_build_object("
        "'source', 'fault', 'external_id', i, 'occurred_at', '2026-01-01')) FROM generate_series(1, 40) i))"
    ).fetchall()
    signals = [r[0] for r in rows]
    for n, opp in enumerate([target, *sources]):
        conn.execute("SELECT sigledger.link_signals(%s, %s)", (opp, signals[n * 8 : n * 8 + 16]))
    return str(target), [str(s) for s in sources]


def _wait_until_blocked(conn: psycopg.Connection, pid: int) -> None:
    for _ in range(600):
        row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.05)
    raise AssertionError(f"backend {pid} never blocked on a lock")


def test_terminated_merge_changes_nothing(conn: psycopg.Connection, db_dsn: str) -> None:
    target, sources = _setup(conn)
    before = conn.execute(SNAPSHOT).fetchone()

    blocker = psycopg.connect(db_dsn)
    blocker.execute("LOCK TABLE sigledger.opportunity_merges IN ACCESS EXCLUSIVE MODE")

    merger = psycopg.connect(db_dsn, autocommit=True, application_name="fault-merge")
    pid = merger.info.backend_pid
    outcome: dict[str, Any] = {}

    def run_merge() -> None:
        try:
            merger.execute("SELECT * FROM sigledger.merge_opportunities(%s, %s::uuid[])", (target, sources))
            outcome["result"] = "committed"
        except psycopg.Error as exc:
            outcome["error"] = translate(exc)

    thread = threading.Thread(target=run_merge)
    thread.start()
    try:
        _wait_until_blocked(conn, pid)
        # The merge is in flight past its writes: it holds row locks on the opportunities and has written to
        # opportunity_signals (RowExclusiveLock), and waits for the history table.
        held = {
            r[0]
            for r in conn.execute(
                "SELECT relation::regclass::text FROM pg_locks WHERE pid = %s AND granted AND mode = 'RowExclusiveLock'",
                (pid,),
            ).fetchall()
        }
        assert {"sigledger.opportunity_signals", "sigledger.opportunities"} <= held, held
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0] is True
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        blocker.rollback()
        blocker.close()
        merger.close()

    assert "result" not in outcome
    assert isinstance(outcome["error"], Unavailable), outcome
    assert conn.execute(SNAPSHOT).fetchone() == before, "a terminated merge left changes behind"

    # Nothing is left locked or half-done: the same merge now succeeds, and moves every link once.
    links_before = conn.execute(
        "SELECT count(DISTINCT signal_id) FROM sigledger.opportunity_signals WHERE opportunity_id = ANY(%s::uuid[])",
        ([target, *sources],),
    ).fetchone()[0]
    conn.execute("SELECT * FROM sigledger.merge_opportunities(%s, %s::uuid[])", (target, sources))
    assert (
        conn.execute(
            "SELECT count(*) FROM sigledger.opportunity_signals WHERE opportunity_id = %s", (target,)
        ).fetchone()[0]
        == links_before
    )
    assert conn.execute("SELECT count(*) FROM sigledger.opportunity_merges").fetchone()[0] == 1


@pytest.mark.parametrize("blocked_table", ["signal_entities", "entity_merges"])
def test_terminated_entity_merge_changes_nothing(
    conn: psycopg.Connection, db_dsn: str, blocked_table: str
) -> None:
    """The same for merge_entities, stopped before it moves links or before its history row."""
    conn.execute(
        "SELECT * FROM sigledger.ingest_signals((SELECT jsonb_agg(jsonb_build_object('source', 'fault', "
        "'external_id', i, 'occurred_at', '2026-01-01', 'mentions', jsonb_build_array('e' || (i % 4), 'e' || (i % 3)))) "
        "FROM generate_series(1, 30) i))"
    )
    ids = [conn.execute("SELECT sigledger.resolve_entity(%s)", (f"e{i}",)).fetchone()[0] for i in range(4)]
    state = """SELECT (SELECT jsonb_agg(to_jsonb(e) ORDER BY e.id) FROM sigledger.entities e),
                      (SELECT jsonb_agg(to_jsonb(a) ORDER BY a.id) FROM sigledger.entity_aliases a),
                      (SELECT jsonb_agg(jsonb_build_array(s.signal_id, s.entity_id) ORDER BY 1) FROM sigledger.signal_entities s),
                      (SELECT count(*) FROM sigledger.entity_merges), (SELECT count(*) FROM sigledger.outbox)"""
    before = conn.execute(state).fetchone()
    blocker = psycopg.connect(db_dsn)
    blocker.execute(f"LOCK TABLE sigledger.{blocked_table} IN ACCESS EXCLUSIVE MODE")
    merger = psycopg.connect(db_dsn, autocommit=True)
    pid = merger.info.backend_pid
    errors: list[BaseException] = []

    def run_merge() -> None:
        try:
            merger.execute("SELECT * FROM sigledger.merge_entities(%s, %s::uuid[])", (ids[0], ids[1:]))
        except psycopg.Error as exc:
            errors.append(translate(exc))

    thread = threading.Thread(target=run_merge)
    thread.start()
    try:
        _wait_until_blocked(conn, pid)
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0] is True
        thread.join(timeout=30)
    finally:
        blocker.rollback()
        blocker.close()
        merger.close()
    assert len(errors) == 1 and isinstance(errors[0], Unavailable), errors
    assert conn.execute(state).fetchone() == before
