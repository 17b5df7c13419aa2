"""CostTracker durability benchmark (``make bench-tracker``): what ``record()`` costs per record at each durability
level, against a baseline measured in the same run.

- baseline: what record() did before the journal (validate, serialise, append to memory): nothing survives a
  crash;
- process: the record is written to the journal file (page cache) before record() returns;
- machine: it also waits for an fsync, shared by the records written meanwhile (group commit): 1 thread (one
  fsync per record), 8 and 64 threads through one tracker, and 200 asyncio tasks through one AsyncCostTracker.

record() never talks to the database (the flush does, in the background): the trackers here have a database
that is not reachable and never flush during the measurement, so the figures are the journal's alone. The
spool folder is on the disk of the checkout (.sigledger/bench-tracker), not on a tmpfs. Results:
bench/results/tracker.json and .md (with the load average: the machine may be shared). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import shutil
import socket
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "harness"), str(ROOT)]

from sigledger.core.adb import AsyncDatabase  # noqa: E402
from sigledger.core.db import Database  # noqa: E402
from sigledger.ledger.atracker import AsyncCostTracker  # noqa: E402
from sigledger.ledger.records import CostRecord, validate_record  # noqa: E402
from sigledger.ledger.tracker import CostTracker  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = ROOT / ".sigledger" / "bench-tracker"


def unreachable() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=1"


def records(n: int, prefix: str) -> list[CostRecord]:
    return [
        CostRecord(
            agent_id="bench-agent",
            model="gpt-x",
            provider="openai",
            input_tokens=812,
            output_tokens=230,
            cost_usd=Decimal("0.0043"),
            metadata={"request": f"r{i}"},
            idempotency_key=f"{prefix}-{i}",
        )
        for i in range(n)
    ]


def baseline(n: int) -> float:
    buf: collections.deque[tuple[None, dict[str, Any]]] = collections.deque()
    lock = threading.Lock()
    recs = records(n, "base")
    start = time.perf_counter()
    for rec in recs:
        validate_record(rec)
        data = rec.to_json()
        json.dumps(data, default=str)
        with lock:
            buf.append((None, data))
    return time.perf_counter() - start


def sync_level(durability: str, n: int, threads: int) -> tuple[float, int]:
    folder = WORK / f"{durability}-{threads}"
    shutil.rmtree(folder, ignore_errors=True)
    db = Database(unreachable(), min_size=0, timeout=0.5)
    db.open(wait=False)
    tracker = CostTracker(
        db, folder, durability=durability, capacity=n + 1, batch_size=n + 1, flush_interval=3600
    )
    tracker.start()
    syncs = 0
    sync = tracker.journal.sync

    def counting_sync() -> None:
        nonlocal syncs
        syncs += 1
        sync()

    tracker.journal.sync = counting_sync  # type: ignore[method-assign]
    recs = records(n, f"{durability}-{threads}")
    per = n // threads
    barrier = threading.Barrier(threads + 1)

    def work(part: list[CostRecord]) -> None:
        barrier.wait()
        for rec in part:
            tracker.record(rec)

    workers = [threading.Thread(target=work, args=(recs[i * per : (i + 1) * per],)) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    tracker._stopping = True  # leave the journal as it is: no flush against the unreachable database
    tracker.journal.close()
    db.close(timeout=1)
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed, syncs


async def async_level(durability: str, n: int, tasks: int) -> tuple[float, int]:
    folder = WORK / f"async-{durability}-{tasks}"
    shutil.rmtree(folder, ignore_errors=True)
    db = AsyncDatabase(unreachable(), min_size=0, timeout=0.5)
    await db.open(wait=False)
    tracker = AsyncCostTracker(
        db, folder, durability=durability, capacity=n + 1, batch_size=n + 1, flush_interval=3600
    )
    await tracker.start()
    syncs = 0
    sync = tracker.journal.sync

    def counting_sync() -> None:
        nonlocal syncs
        syncs += 1
        sync()

    tracker.journal.sync = counting_sync  # type: ignore[method-assign]
    recs = records(n, f"async-{durability}")
    per = n // tasks

    async def work(part: list[CostRecord]) -> None:
        for rec in part:
            await tracker.record(rec)

    start = time.perf_counter()
    await asyncio.gather(*(work(recs[i * per : (i + 1) * per]) for i in range(tasks)))
    elapsed = time.perf_counter() - start
    tracker._stopping = True
    tracker._wake.set()
    tracker.journal.close()
    await db.close(timeout=1)
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed, syncs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000, help="records per case (machine, 1 thread: n/10)")
    args = p.parse_args()
    n = args.n
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []

    def add(case: str, durability: str, count: int, run: Any, concurrency: int) -> None:
        """The median of 3 runs of the case (the machine is shared: single runs are noisy)."""
        runs = sorted((run() for _ in range(3)), key=lambda r: r[0])
        elapsed, syncs = runs[1]
        rows.append(
            {
                "case": case,
                "durability": durability,
                "concurrency": concurrency,
                "records": count,
                "us_per_record": round(elapsed / count * 1e6, 2),
                "records_per_s": round(count / elapsed),
                "fsyncs": syncs,
            }
        )
        print(f"{case:38s} {elapsed / count * 1e6:9.2f} us/record  fsyncs={syncs}", flush=True)

    small = max(1000, n // 10)
    cases = [
        ("baseline (memory only, before #14)", "none", n, lambda: (baseline(n), None), 1),
        ("process, 1 thread", "process", n, lambda: sync_level("process", n, 1), 1),
        ("process, 8 threads", "process", n, lambda: sync_level("process", n, 8), 8),
        ("machine, 1 thread", "machine", small, lambda: sync_level("machine", small, 1), 1),
        ("machine, 8 threads", "machine", n // 2, lambda: sync_level("machine", n // 2, 8), 8),
        ("machine, 64 threads", "machine", n // 2, lambda: sync_level("machine", n // 2, 64), 64),
        ("async process, 200 tasks", "process", n, lambda: asyncio.run(async_level("process", n, 200)), 200),
        (
            "async machine, 200 tasks",
            "machine",
            n // 2,
            lambda: asyncio.run(async_level("machine", n // 2, 200)),
            200,
        ),
    ]
    for case in cases:
        add(*case)
    base = rows[0]["us_per_record"]
    for row in rows:
        row["ratio_to_baseline"] = round(row["us_per_record"] / base, 1)
    result = {
        "benchmark": "tracker",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "spool_folder_filesystem": "the checkout's disk (.sigledger/bench-tracker)",
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tracker.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "| case | us per record | records/s | fsyncs | x baseline |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r['case']} | {r['us_per_record']} | {r['records_per_s']} | {r['fsyncs'] if r['fsyncs'] is not None else '-'}"
            f" | {r['ratio_to_baseline']} |"
            for r in rows
        ),
        "",
        f"Load average before/after (1, 5, 15 min): {result['load_average_before']} / {result['load_average_after']}"
        f" on {os.cpu_count()} CPUs; {result['when']}.",
    ]
    (RESULTS / "tracker.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
