"""Every acknowledged cost survives a crash (issue 14): record() returns once the record is in the local journal,
so a SIGKILL right after it loses nothing, with the database up or down; a journal write that fails makes
record() raise and keeps what was already acknowledged; a corrupt journal line is dead-lettered and the rest
replays; several processes share one spool folder; and a crash test kills an application at random moments.

Each worker journals a key ("ACK <key>" on stdout, or a line in an ack file) only after record() returned: the
set of acknowledged keys is what must be in the ledger, exactly once."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from sigledger.core.db import Database
from sigledger.ledger.client import CostRecord
from sigledger.ledger.tracker import CostTracker

from tests.budget.conftest import ROOT, OwnCluster, ledger_keys, popen, worker, worker_env
from tests.budget.test_cost_tracker import make_agent, unreachable_dsn


def acks(out: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("ACK ")]


def refused(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("REFUSED ")]


def kill_and_drain(proc: subprocess.Popen[str]) -> str:
    """SIGKILL, then the rest of stdout. Read through the same text stream as the readline() calls before:
    communicate() reads the pipe underneath and would miss the lines that stream had already buffered."""
    proc.kill()
    assert proc.stdout is not None and proc.stderr is not None
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()
    return rest


def assert_acknowledged_exactly_once(stored: list[str], acknowledged: list[str]) -> None:
    """Every acknowledged key is stored once. A key may be stored without its acknowledgement only when the kill
    came between record()'s return and the worker's ACK line: then it is the one right after the last ACK of
    its run."""
    assert set(acknowledged) <= set(stored), (
        f"{len(set(acknowledged) - set(stored))} acknowledged keys missing"
    )
    last: dict[str, int] = {}
    for key in acknowledged:
        run, i = key.rsplit("-", 1)
        last[run] = max(last.get(run, -1), int(i))
    for key in set(stored) - set(acknowledged):
        run, i = key.rsplit("-", 1)
        assert int(i) == last.get(run, -1) + 1, f"{key} stored but neither acknowledged nor in flight"


def replay(dsn: str, spool: Path) -> CostTracker:
    """What the next start of the application does: replay the journal, then close."""
    with Database(dsn) as db:
        tracker = CostTracker(db, spool).start()
        tracker.close()
    return tracker


def exactly_once(dsn: str, prefix: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, count(*) FROM sigledger.llm_cost_log WHERE idempotency_key LIKE %s"
            " GROUP BY 1",
            (prefix + "%",),
        ).fetchall()
    assert all(n == 1 for _, n in rows)
    return sorted(k for k, _ in rows)


def tracker_args(dsn: str, agent: str, spool: Path, prefix: str, *extra: str) -> list[str]:
    return [
        "tracker",
        "--dsn",
        dsn,
        "--agent",
        agent,
        "--spool",
        str(spool),
        "--ack",
        "-",
        "--prefix",
        prefix,
        *extra,
    ]


@pytest.mark.parametrize("durability", ["process", "machine"])
def test_sigkill_right_after_record_loses_nothing(db_dsn: str, tmp_path: Path, durability: str) -> None:
    # the repro: record 300, SIGKILL, the next start: all 300 in the ledger (before: none)
    agent = make_agent(db_dsn, "dur-kill")
    spool = tmp_path / "spool"
    proc = popen(
        *tracker_args(
            db_dsn,
            agent,
            spool,
            "k",
            "--n",
            "1000",
            "--interval",
            "30",
            "--kill-after",
            "300",
            "--batch",
            "5000",
        ),
        "--durability",
        durability,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    keys = acks(out)
    assert len(keys) == 300
    assert ledger_keys(db_dsn, "k-") == []  # nothing was flushed before the kill
    replay(db_dsn, spool)
    assert exactly_once(db_dsn, "k-") == sorted(keys)


def test_sigkill_while_the_database_is_down_loses_nothing(db_dsn: str, tmp_path: Path) -> None:
    agent = make_agent(db_dsn, "dur-kill-down")
    spool = tmp_path / "spool"
    proc = popen(
        *tracker_args(
            unreachable_dsn(), agent, spool, "kd", "--n", "5000", "--interval", "0.1", "--pool-timeout", "0.5"
        ),
        "--kill-after",
        "540",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    keys = acks(out)
    assert len(keys) == 540
    replay(db_dsn, spool)
    assert exactly_once(db_dsn, "kd-") == sorted(keys)


def test_full_disk_makes_record_raise_and_keeps_what_it_acknowledged(db_dsn: str, tmp_path: Path) -> None:
    # a file-size limit cuts the journal write (EFBIG, what a full disk does with ENOSPC): record() raises at
    # the first record it cannot journal; every record it acknowledged before is kept (before: 1,113 of 1,500
    # lost, exit 0)
    agent = make_agent(db_dsn, "dur-full")
    spool = tmp_path / "spool"
    proc = popen(
        *tracker_args(
            unreachable_dsn(),
            agent,
            spool,
            "full",
            "--n",
            "1500",
            "--interval",
            "0.2",
            "--pool-timeout",
            "0.5",
        ),
        "--fsize",
        "100000",
    )
    out, err = proc.communicate(timeout=120)
    keys = acks(out)
    assert proc.returncode == 0, err
    assert len(refused(out)) == 1 and "JournalError" in refused(out)[0], out[-500:]
    first_refused = int(refused(out)[0].split()[1])
    assert 0 < len(keys) == first_refused < 1500
    replay(db_dsn, spool)
    assert exactly_once(db_dsn, "full-") == sorted(keys)


def test_spool_folder_replaced_by_a_file_after_start(db_dsn: str, tmp_path: Path) -> None:
    # the folder is removed and a file put in its place while the application runs, the database down: the
    # next record() raises (the journal is gone), and what was acknowledged before is not lost: it is written
    # to the database when it is back (here: the tracker's final flush against the database that answers)
    agent = make_agent(db_dsn, "dur-gone")
    spool = tmp_path / "spool"
    ack = tmp_path / "ack"
    proc = popen(
        "tracker",
        "--dsn",
        db_dsn,
        "--agent",
        agent,
        "--spool",
        str(spool),
        "--ack",
        str(ack),
        "--prefix",
        "gone",
        "--n",
        "100000",
        "--rate",
        "2000",
        "--interval",
        "30",
    )
    deadline = time.monotonic() + 60
    while not (ack.exists() and len(ack.read_text().splitlines()) >= 500) and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(spool)
    spool.write_text("not a folder\n")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(refused(out)) == 1 and "JournalError" in refused(out)[0], out[-500:]
    keys = ack.read_text().splitlines()
    assert len(keys) >= 500
    assert exactly_once(db_dsn, "gone-") == sorted(keys)


def test_spool_folder_made_read_only_after_start_still_journals(db_dsn: str, tmp_path: Path) -> None:
    # permissions: the folder becomes read-only while the application runs (the process without
    # CAP_DAC_OVERRIDE, so the mode applies to root too) and the database is down; the open journal segment
    # still takes every record, and a SIGKILL then loses nothing
    agent = make_agent(db_dsn, "dur-perm")
    spool = tmp_path / "spool"
    spool.mkdir()
    cmd = [
        "setpriv",
        "--bounding-set=-dac_override,-dac_read_search",
        "--",
        *worker(
            *tracker_args(
                unreachable_dsn(),
                agent,
                spool,
                "perm",
                "--n",
                "100000",
                "--rate",
                "2000",
                "--pool-timeout",
                "0.5",
            ),
            "--interval",
            "0.1",
        ),
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        seen = 0
        while seen < 300:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            seen += line.startswith("ACK ")
        spool.chmod(0o500)
        while seen < 1500:
            line = proc.stdout.readline()
            assert line and not line.startswith("REFUSED"), line
            seen += line.startswith("ACK ")
        rest = kill_and_drain(proc)
    finally:
        spool.chmod(0o700)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert not refused(rest), rest[-500:]
    keys = [f"perm-{i}" for i in range(seen)] + acks(rest)
    replay(db_dsn, spool)
    assert_acknowledged_exactly_once(exactly_once(db_dsn, "perm-"), keys)


def test_start_refuses_a_folder_it_cannot_write(tmp_path: Path, db_dsn: str) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o500)
    code = (
        "import sys; from sigledger.core.db import Database; from sigledger.ledger.tracker import CostTracker\n"
        "from sigledger.core.errors import JournalError\n"
        "db = Database(sys.argv[1]).open()\n"
        "try:\n    CostTracker(db, sys.argv[2]).start()\n"
        "except JournalError as exc:\n    print('REFUSED', exc)\n"
        "db.close()\n"
    )
    out = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
            sys.executable,
            "-c",
            code,
            db_dsn,
            str(spool),
        ],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.startswith("REFUSED") and str(spool) in out and "Permission denied" in out, out


def _segment(spool: Path, name: str, lines: list[str]) -> Path:
    spool.mkdir(exist_ok=True)
    path = spool / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_corrupt_journal_line_is_dead_lettered_and_the_rest_replays(db_dsn: str, tmp_path: Path) -> None:
    # before: one non-JSON line made every start fail with JSONDecodeError and nothing of that file replayed
    agent = make_agent(db_dsn, "dur-corrupt")
    spool = tmp_path / "spool"

    def good(i: int) -> str:
        rec = CostRecord(
            agent_id=agent, model="m", provider="p", cost_usd=Decimal("0.01"), idempotency_key=f"corrupt-{i}"
        )
        return json.dumps(rec.to_json())

    _segment(spool, "1-1-dead01.journal", [good(0), "{not json", good(1), '{"x": 1}', good(2), "[1, 2]"])
    tracker = replay(db_dsn, spool)
    assert exactly_once(db_dsn, "corrupt-") == ["corrupt-0", "corrupt-1", "corrupt-2"]
    dead = [json.loads(line) for line in tracker.rejected_path.read_text().splitlines()]
    assert [(d["line"], d["error"]) for d in dead] == [
        (2, "JSONDecodeError"),
        (4, "KeyError"),
        (6, "TypeError"),
    ]
    assert all(d["file"].endswith("1-1-dead01.journal") and d["raw"] for d in dead)
    assert not list(spool.glob("*.journal"))


def test_processes_sharing_a_spool_folder_start_together(db_dsn: str, tmp_path: Path) -> None:
    # before: two processes replayed the same file and the loser died at unlink() (5 of 10 start-ups)
    agent = make_agent(db_dsn, "dur-shared")
    spool = tmp_path / "spool"
    expected = []
    for f in range(4):
        lines = []
        for i in range(250):
            key = f"shared-{f}-{i}"
            expected.append(key)
            lines.append(
                json.dumps(
                    CostRecord(
                        agent_id=agent, model="m", provider="p", cost_usd=Decimal("0.01"), idempotency_key=key
                    ).to_json()
                )
            )
        _segment(spool, f"{f}-1-dead{f:02d}.journal", lines)
    code = (
        "import sys; from sigledger.core.db import Database; from sigledger.ledger.tracker import CostTracker\n"
        "sys.stdin.readline()\n"  # all start together
        "with Database(sys.argv[1]) as db:\n    CostTracker(db, sys.argv[2]).start().close()\nprint('OK')\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, db_dsn, str(spool)],
            env=worker_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    time.sleep(1.0)  # let them import (a wait, not an assertion)
    results = [p.communicate("go\n", timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 10, [err[-800:] for _, err in results if err]
    assert all(out.strip() == "OK" for out, _ in results)
    assert exactly_once(db_dsn, "shared-") == sorted(expected)
    assert not list(spool.glob("*.journal"))


def test_crash_at_random_moments_up_and_down(own_cluster: OwnCluster, tmp_path: Path) -> None:
    """An application killed with SIGKILL at random moments, 6 times: 3 with the database up, 3 with it down (the
    cluster stopped). Every key acknowledged before a kill is in the ledger exactly once at the end."""
    dsn = own_cluster.dsn
    agent = make_agent(dsn, "dur-crash")
    spool = tmp_path / "spool"
    rnd = random.Random(14)
    acknowledged: list[str] = []
    try:
        for run in range(6):
            down = run % 2 == 1
            if down:
                own_cluster.stop()
            proc = popen(
                *tracker_args(
                    dsn,
                    agent,
                    spool,
                    f"crash{run}",
                    "--n",
                    "1000000",
                    "--rate",
                    "3000",
                    "--pool-timeout",
                    "0.5",
                ),
                "--interval",
                rnd.choice(["0.05", "0.3", "1.0"]),
                "--batch",
                "100",
            )
            assert proc.stdout is not None
            target = rnd.randint(50, 2500)
            seen = 0
            while seen < target:
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else ""
                if line.startswith("ACK "):
                    acknowledged.append(line.split(" ", 1)[1].strip())
                    seen += 1
            time.sleep(rnd.uniform(0, 0.3))
            acknowledged += acks(kill_and_drain(proc))
            if down:
                own_cluster.start()
    finally:
        own_cluster.start()
    replay(dsn, spool)
    assert_acknowledged_exactly_once(exactly_once(dsn, "crash"), acknowledged)
    assert not list(spool.glob("*.journal"))
