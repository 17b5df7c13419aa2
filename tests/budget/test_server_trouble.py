"""A server in trouble is not bad data (issues 9 and 14: nothing acknowledged is ever lost).

A database that answers but cannot write (read-only after a failover: 25006; disk full, out of memory: 53xxx; I/O
errors: 58xxx; XX000) must leave the tracker's records in the journal and the guard's spent cost in the tracker,
never in the dead-letter file nor nowhere; they land once the database can write again. With
durability="machine" the async tracker never fsyncs on the event loop's thread."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sigledger.budget import BudgetClient, BudgetGuard
from sigledger.core.adb import AsyncDatabase
from sigledger.core.db import Database
from sigledger.core.errors import Unavailable, translate
from sigledger.ledger.atracker import AsyncCostTracker
from sigledger.ledger.client import CostRecord
from sigledger.ledger.replay import rejection
from sigledger.ledger.tracker import CostTracker

from tests.budget.conftest import ledger_keys
from tests.budget.test_cost_tracker import journal_files, make_agent


def read_only(db_dsn: str, db_name: str, on: bool) -> None:
    """Make new sessions of the database read-only (an old primary after a failover answers 25006), or not."""
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        admin.execute("SET default_transaction_read_only = off")  # this session too started read-only
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                sql.Identifier(db_name), sql.Literal("on" if on else "off")
            )
        )


def terminate_others(db_dsn: str, db_name: str) -> int:
    """Terminate every other session of the database (the pool reconnects: read-only from now on)."""
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (db_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for_keys(dsn: str, prefix: str, n: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    keys = ledger_keys(dsn, prefix)
    while len(keys) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        keys = ledger_keys(dsn, prefix)
    return keys


def test_a_read_only_database_dead_letters_nothing_and_the_records_land_once_writable(
    db_dsn: str, app_dsn: str, db_name: str, tmp_path: Path
) -> None:
    # the reviewer's repro: 4 records while the database refuses writes (25006); they used to be bisected and
    # all moved to rejected.jsonl (never replayed), each entry ~15 KB of CONTEXT
    agent = make_agent(db_dsn, "tracker-read-only")
    spool = tmp_path / "spool"
    read_only(db_dsn, db_name, True)
    try:
        with Database(app_dsn) as db:
            tracker = CostTracker(db, spool, flush_interval=0.2).start()
            for i in range(4):
                tracker.record(
                    CostRecord(
                        agent_id=agent,
                        model="m",
                        provider="p",
                        cost_usd=Decimal("0.01"),
                        idempotency_key=f"ro-{i}",
                    )
                )
            deadline = time.monotonic() + 30
            while tracker.pending() and time.monotonic() < deadline:  # flushes met 25006: left to the journal
                time.sleep(0.05)
            time.sleep(0.5)  # a few more flushes (and replays of the journal) against the read-only database
            assert not tracker.rejected_path.exists(), tracker.rejected_path.read_text()[:2000]
            assert ledger_keys(db_dsn, "ro-") == []
            read_only(db_dsn, db_name, False)
            # the same tracker, the same pool: the next flushes replay the journal on writable connections
            assert sorted(wait_for_keys(db_dsn, "ro-", 4)) == [f"ro-{i}" for i in range(4)]
            tracker.close()
    finally:
        read_only(db_dsn, db_name, False)
    assert not tracker.rejected_path.exists()
    assert not journal_files(spool)


def test_the_guard_defers_a_settle_the_read_only_database_refuses(
    db_dsn: str, app_dsn: str, db_name: str, tmp_path: Path
) -> None:
    # a raw 25006 used to escape the `with`: the hold stayed open until its TTL and the cost was recorded nowhere
    spool = tmp_path / "spool"
    agent = make_agent(db_dsn, "guard-read-only")
    with Database(db_dsn) as admin:
        BudgetClient(admin).set_budget(agent, Decimal("10"))
    try:
        with Database(app_dsn, timeout=5) as db:
            tracker = CostTracker(db, spool, flush_interval=0.2).start()
            guard = BudgetGuard(db, tracker=tracker, max_attempts=2)
            with guard.reserve(agent, Decimal("1")) as r:
                read_only(db_dsn, db_name, True)
                assert terminate_others(db_dsn, db_name) >= 1  # the app's sessions reconnect read-only
                r.set_cost(Decimal("0.75"), model="m", provider="p")
            assert r.outcome == "settle-deferred" and guard.stats["settle_deferred"] == 1
            key = f"reservation:{r.reservation_id}"
            assert ledger_keys(db_dsn, key) == []
            read_only(db_dsn, db_name, False)
            assert wait_for_keys(db_dsn, key, 1) == [key]  # the tracker replays it
            tracker.close()
    finally:
        read_only(db_dsn, db_name, False)
    assert not tracker.rejected_path.exists()
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT cost_usd FROM sigledger.llm_cost_log WHERE idempotency_key = %s", (key,)
        ).fetchone()
    assert row is not None and row[0] == Decimal("0.75")


def test_the_async_tracker_never_fsyncs_on_the_event_loop(
    app_dsn: str, db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # segment rotations (a small segment size) and a full buffer left to the journal (capacity 5, when_full
    # "spool") used to fsync the old segment and the folder from record() on the loop's thread
    agent = make_agent(db_dsn, "tracker-fsync-thread")
    threads: list[threading.Thread] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        threads.append(threading.current_thread())
        real_fsync(fd)

    async def main() -> threading.Thread:
        loop_thread = threading.current_thread()
        async with AsyncDatabase(app_dsn) as db:
            tracker = AsyncCostTracker(
                db,
                tmp_path / "spool",
                durability="machine",
                capacity=5,
                when_full="spool",
                flush_interval=3600,
            )
            tracker.journal.segment_bytes = 2000
            await tracker.start()
            await asyncio.gather(
                *(
                    tracker.record(
                        CostRecord(
                            agent_id=agent,
                            model="m",
                            provider="p",
                            cost_usd=Decimal("0.01"),
                            idempotency_key=f"fsync-{i}",
                        )
                    )
                    for i in range(40)
                )
            )
            assert tracker.stats["spooled"] > 0  # the buffer was full: its records were left to the journal
            await tracker.close()
        return loop_thread

    monkeypatch.setattr(os, "fsync", recording_fsync)
    loop_thread = asyncio.run(main())
    assert threads, "durability=machine fsynced nothing"
    on_loop = sum(1 for t in threads if t is loop_thread)
    assert on_loop == 0, f"{on_loop} of {len(threads)} fsyncs ran on the event loop's thread"
    assert sorted(ledger_keys(db_dsn, "fsync-")) == sorted(f"fsync-{i}" for i in range(40))


def test_a_server_in_trouble_is_unavailable_and_a_dead_letter_keeps_the_primary_message(
    db_dsn: str, app_dsn: str, db_name: str
) -> None:
    # 25006 and the classes of a server in trouble translate to Unavailable (the guard and the tracker keep
    # what they hold for later), not to a raw psycopg error
    # (57014: a statement past the login's statement_timeout, or cancelled; any call, record_costs included)
    trouble = ("25006", "53100", "53200", "53300", "58030", "XX000", "XX001", "F0000", "40003")
    for sqlstate in (*trouble, "57014", "57P01"):
        err = psycopg.errors.lookup(sqlstate)("boom")
        assert isinstance(translate(err), Unavailable), sqlstate
    # a dead-letter entry keeps the primary message and the SQLSTATE, not str(exc) with the CONTEXT of every
    # SQL line the error went through (~15 KB for record_costs)
    read_only(db_dsn, db_name, True)
    try:
        with psycopg.connect(app_dsn) as raw, raw.cursor() as cur:
            try:
                cur.execute("SELECT sigledger.record_costs(%s::jsonb)", ('[{"x": 1}]',))
            except psycopg.Error as exc:
                entry = rejection({}, exc)
            else:
                raise AssertionError("a read-only database took a write")
    finally:
        read_only(db_dsn, db_name, False)
    assert entry["sqlstate"] == "25006" and entry["error"] == "ReadOnlySqlTransaction"
    assert entry["message"].endswith("in a read-only transaction") and "CONTEXT" not in entry["message"], (
        entry
    )
