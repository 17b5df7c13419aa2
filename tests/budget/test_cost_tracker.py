"""CostTracker with real processes and a real server: SIGTERM under load, SIGKILL after spooling, the cluster
stopped mid-run, a full buffer, a pool closed before the tracker; records refused at the call, a batch the
database refuses as a whole (bisected, the bad record dead-lettered), and a final flush that fails."""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from sigledger.budget import BudgetClient
from sigledger.core import metrics
from sigledger.core.db import Database
from sigledger.core.errors import InvalidInput
from sigledger.ledger.client import CostRecord
from sigledger.ledger.tracker import CostTracker, TrackerClosed

from tests.budget.conftest import OwnCluster, ledger_keys, popen


def make_agent(dsn: str, name: str) -> str:
    with Database(dsn) as db:
        return BudgetClient(db).create_agent(name)


def wait_for_lines(path: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


def journal_files(spool: Path) -> list[Path]:
    """Journal files that still hold records (segments of the spool folder, old replay files beside it)."""
    files = [*spool.glob("*.journal"), *spool.parent.glob(spool.name + ".replay-*")] if spool.is_dir() else []
    return [f for f in files if f.stat().st_size > 0]


def acked(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def unreachable_dsn() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=x user=postgres connect_timeout=1"


def test_sigterm_under_load_loses_nothing(db_dsn: str, tmp_path: Path) -> None:
    agent = make_agent(db_dsn, "tracker-term")
    ack = tmp_path / "ack"
    proc = popen(
        "tracker",
        "--dsn",
        db_dsn,
        "--agent",
        agent,
        "--spool",
        str(tmp_path / "spool"),
        "--ack",
        str(ack),
        "--prefix",
        "term",
        "--n",
        "1000000",
        "--rate",
        "3000",
        "--batch",
        "200",
        "--interval",
        "0.5",
        "--wait",
    )
    wait_for_lines(ack, 1500)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err, err
    keys = acked(ack)
    stored = ledger_keys(db_dsn, "term-")
    assert len(keys) >= 1500
    assert set(keys) <= set(stored), f"{len(set(keys) - set(stored))} acknowledged records missing"
    assert len(stored) == len(set(stored))
    assert not journal_files(tmp_path / "spool"), "the journal should be empty with the database up"


def test_sigkill_after_spooling_then_replay_recovers_all(db_dsn: str, tmp_path: Path) -> None:
    agent = make_agent(db_dsn, "tracker-kill")
    ack, spool = tmp_path / "ack", tmp_path / "spool"
    proc = popen(
        "tracker",
        "--dsn",
        unreachable_dsn(),
        "--agent",
        agent,
        "--spool",
        str(spool),
        "--ack",
        str(ack),
        "--prefix",
        "kill",
        "--n",
        "700",
        "--interval",
        "30",
        "--pool-timeout",
        "1",
        "--spool-then-wait",
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("SPOOLED"), (line, proc.stderr.read() if proc.stderr else "")
    proc.kill()  # SIGKILL: no graceful path at all
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert ledger_keys(db_dsn, "kill-") == []
    with Database(db_dsn) as db:
        tracker = CostTracker(db, spool).start()  # the next start replays
        tracker.close()
    keys = acked(ack)
    assert len(keys) == 700
    assert sorted(ledger_keys(db_dsn, "kill-")) == sorted(keys)
    assert not journal_files(spool)


def test_cluster_stopped_mid_run_spools_then_replays(own_cluster: OwnCluster, tmp_path: Path) -> None:
    agent = make_agent(own_cluster.dsn, "tracker-outage")
    ack, spool = tmp_path / "ack", tmp_path / "spool"
    proc = popen(
        "tracker",
        "--dsn",
        own_cluster.dsn,
        "--agent",
        agent,
        "--spool",
        str(spool),
        "--ack",
        str(ack),
        "--prefix",
        "outage",
        "--n",
        "3000",
        "--rate",
        "500",
        "--batch",
        "100",
        "--interval",
        "0.2",
        "--pool-timeout",
        "1",
    )
    try:
        wait_for_lines(ack, 400)
        own_cluster.stop()
        wait_for_lines(ack, 1200)  # records keep being accepted while the server is down
        spooled_during_outage = bool(journal_files(spool))
        own_cluster.start()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        own_cluster.start()
    assert proc.returncode == 0, err
    assert "DONE" in out
    assert spooled_during_outage, "the outage never reached the spool"
    keys = acked(ack)
    stored = ledger_keys(own_cluster.dsn, "outage-")
    assert len(keys) == 3000
    assert sorted(stored) == sorted(keys), f"{len(set(keys) - set(stored))} missing"
    assert not journal_files(spool)


def test_full_buffer_leaves_records_to_the_journal_instead_of_dropping(db_dsn: str, tmp_path: Path) -> None:
    # memory holds at most `capacity` records; when it is full they are left to the journal (memory freed),
    # and the next flush replays them from the file
    agent = make_agent(db_dsn, "tracker-full")
    spool = tmp_path / "spool"
    with Database(db_dsn) as db:
        tracker = CostTracker(db, spool, capacity=10, batch_size=100, flush_interval=3600, when_full="spool")
        tracker.start()
        for i in range(35):
            tracker.record(
                CostRecord(
                    agent_id=agent,
                    model="m",
                    provider="p",
                    cost_usd=Decimal("0.01"),
                    idempotency_key=f"full-{i}",
                )
            )
            assert tracker.pending() <= 10
        assert tracker.stats["spooled"] == 30 and tracker.pending() == 5
        assert ledger_keys(db_dsn, "full-") == []
        tracker.close()  # flushes memory, then replays the journal's files
    assert len(ledger_keys(db_dsn, "full-")) == 35
    assert not journal_files(spool)


def test_pool_closed_first_never_raises_and_spools(db_dsn: str, tmp_path: Path) -> None:
    agent = make_agent(db_dsn, "tracker-pool")
    spool = tmp_path / "spool"
    db = Database(db_dsn, timeout=1).open()
    tracker = CostTracker(db, spool, flush_interval=3600).start()
    for i in range(50):
        tracker.record(
            CostRecord(
                agent_id=agent, model="m", provider="p", cost_usd=Decimal("0.01"), idempotency_key=f"pool-{i}"
            )
        )
    db.close()  # the wrong order: the seed's "Cannot use pool after calling end"
    tracker.close()  # must not raise; the records stay in the journal
    with pytest.raises(TrackerClosed):
        tracker.record(CostRecord(agent_id=agent, model="m", provider="p", cost_usd=Decimal("0.01")))
    assert tracker.stats["spooled"] == 50 and journal_files(spool)
    with Database(db_dsn) as db2:
        CostTracker(db2, spool).start().close()
    assert len(ledger_keys(db_dsn, "pool-")) == 50


def test_graceful_order_flushes_everything_before_the_pool_closes(db_dsn: str, tmp_path: Path) -> None:
    agent = make_agent(db_dsn, "tracker-order")
    with (
        Database(db_dsn) as db,
        CostTracker(db, tmp_path / "spool", batch_size=50, flush_interval=0.05) as tracker,
    ):
        for i in range(2000):
            tracker.record(
                CostRecord(
                    agent_id=agent,
                    model="m",
                    provider="p",
                    cost_usd=Decimal("0.001"),
                    idempotency_key=f"order-{i}",
                )
            )
    # tracker closed first (inner with), then the pool
    assert tracker.stats["spooled"] == 0
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT count(*), sum(cost_usd) FROM sigledger.llm_cost_log WHERE idempotency_key LIKE 'order-%'"
        ).fetchone()
    assert row == (2000, Decimal("2.000000"))


def _good(agent: str, key: str, **kw: object) -> CostRecord:
    return CostRecord(
        agent_id=agent, model="m", provider="p", cost_usd=Decimal("0.01"), idempotency_key=key, **kw
    )  # type: ignore[arg-type]


def _metric(outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value("sigledger_cost_records_total", {"outcome": outcome}) or 0.0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"metadata": {"x": "bad\x00byte"}}, "metadata.x"),
        ({"metadata": {"nested": {"k\x00": 1}}}, "metadata.nested: key"),
        ({"model": "m\x00"}, "model"),
        ({"idempotency_key": "nulkey-\x00"}, "idempotency_key"),
        ({"metadata": {"f": float("nan")}}, "metadata.f"),
        ({"metadata": {"f": [1, float("inf")]}}, "metadata.f[1]"),
        ({"metadata": {"o": object()}}, "metadata.o"),
        ({"metadata": {"b": b"bytes"}}, "metadata.b"),
        ({"metadata": {"s": "\ud800"}}, "metadata.s"),
        ({"cost_usd": Decimal("NaN")}, "cost_usd"),
    ],
)
def test_record_refuses_what_the_database_can_never_store(
    db_dsn: str, tmp_path: Path, changes: dict[str, object], field: str
) -> None:
    agent = make_agent(db_dsn, "tracker-invalid")
    spool = tmp_path / "spool"
    before = _metric("invalid")
    with Database(db_dsn) as db:
        tracker = CostTracker(db, spool, flush_interval=3600).start()
        bad = dataclasses.replace(_good(agent, "invalid-bad"), **changes)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput) as exc:
            tracker.record(bad)
        assert str(exc.value).startswith(field), exc.value
        assert tracker.pending() == 0 and tracker.stats["invalid"] == 1 and tracker.stats["accepted"] == 0
        tracker.record(_good(agent, "invalid-good"))  # the tracker is not blocked by a refusal
        tracker.close()
    assert ledger_keys(db_dsn, "invalid-") == ["invalid-good"]
    assert _metric("invalid") == before + 1
    assert not list(spool.iterdir()), "nothing left in the journal, nothing dead-lettered"


def test_batch_refused_by_the_database_is_bisected_and_the_bad_record_dead_lettered(
    db_dsn: str, tmp_path: Path
) -> None:
    # the reviewer's repro: 5 good records and one whose metadata holds a NUL (here mutated after the record was
    # accepted, which validation at the call cannot see): PostgreSQL refuses the whole jsonb batch (22P05)
    agent = make_agent(db_dsn, "tracker-bisect")
    spool = tmp_path / "spool"
    before = _metric("rejected")
    with Database(db_dsn) as db:
        tracker = CostTracker(db, spool, flush_interval=3600).start()
        bad_meta: dict[str, object] = {"x": "ok"}
        for i in range(6):
            meta = bad_meta if i == 2 else {}
            tracker.record(_good(agent, f"bisect-{i}", metadata=meta))
        bad_meta["x"] = "bad\x00byte"
        assert tracker.flush() == 5
        assert tracker.pending() == 0
        tracker.close()  # nothing left; does not raise
    assert sorted(ledger_keys(db_dsn, "bisect-")) == [f"bisect-{i}" for i in (0, 1, 3, 4, 5)]
    assert not journal_files(spool)
    lines = tracker.rejected_path.read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["record"]["idempotency_key"] == "bisect-2" and entry["record"]["metadata"] == {
        "x": "bad\x00byte"
    }
    assert entry["sqlstate"] == "22P05" and entry["error"] == "InvalidInput"
    assert tracker.stats["rejected"] == 1 and _metric("rejected") == before + 1


def test_replay_dead_letters_a_spooled_line_the_database_refuses(db_dsn: str, tmp_path: Path) -> None:
    # a spool file of the old layout (one file at the spool path, written before validation existed): it is
    # kept for replay when the folder takes its place, and one line the database can never accept must not
    # block the rest
    agent = make_agent(db_dsn, "tracker-replay-bad")
    spool = tmp_path / "spool"
    records = [_good(agent, f"rbad-{i}").to_json() for i in range(4)]
    records.insert(1, {**_good(agent, "rbad-nul").to_json(), "metadata": {"x": "bad\x00byte"}})
    spool.write_text("".join(json.dumps(r) + "\n" for r in records))
    with Database(db_dsn) as db:
        tracker = CostTracker(db, spool)
        tracker.start()  # replays
        tracker.close()
    assert sorted(ledger_keys(db_dsn, "rbad-")) == [f"rbad-{i}" for i in range(4)]
    assert not journal_files(spool)
    rejected = [json.loads(line) for line in tracker.rejected_path.read_text().splitlines()]
    assert [r["record"]["idempotency_key"] for r in rejected] == ["rbad-nul"]


def test_close_keeps_what_its_final_flush_could_not_write(db_dsn: str, tmp_path: Path) -> None:
    # the final flush fails for a reason that is not an outage (the dead-letter file cannot be written):
    # close() must not lose the buffer: it stays in the journal, close() logs, and the next start finishes
    agent = make_agent(db_dsn, "tracker-close-fail")
    spool = tmp_path / "spool"
    with Database(db_dsn) as db:
        tracker = CostTracker(db, spool, flush_interval=3600).start()
        tracker.rejected_path.mkdir()  # a directory where the dead-letter file should go
        bad_meta: dict[str, object] = {}
        for i in range(6):
            tracker.record(_good(agent, f"closefail-{i}", metadata=bad_meta if i == 4 else {}))
        bad_meta["x"] = "bad\x00byte"
        tracker.close()  # logs; does not raise
        journaled = [
            json.loads(line)["idempotency_key"]
            for f in journal_files(spool)
            for line in f.read_text().splitlines()
        ]
        assert sorted(journaled) == [f"closefail-{i}" for i in range(6)]
        tracker.rejected_path.rmdir()
        again = CostTracker(db, spool)
        again.start()
        again.close()
    # the journal holds each record as it was when record() acknowledged it: closefail-4 was valid then (its
    # metadata got the NUL afterwards, in memory only), so the replay writes all six
    assert sorted(ledger_keys(db_dsn, "closefail-")) == [f"closefail-{i}" for i in range(6)]
    assert not again.rejected_path.exists()
    assert not journal_files(spool)
