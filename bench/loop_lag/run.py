"""Event-loop lag benchmark (``make bench-loop-lag``): how long sigledger's asyncio API keeps the loop from running
other tasks, against a baseline measured in the same run.

One event loop runs a probe (sleep 5 ms, record how late it woke) beside 300 concurrent tasks that each make 5
guarded calls (reserve, a 2 ms "LLM call", settle) and record one cost through the AsyncCostTracker:

- baseline: the same tasks with every sigledger call replaced by nothing (only the 2 ms sleeps): the lag of the
  loop and the machine alone;
- asyncio API: AsyncBudgetGuard + AsyncCostTracker on AsyncDatabase;
- sync API called from async code (what applications did before the asyncio API): BudgetGuard + CostTracker,
  blocking the loop during each database call.

Reported: p50, p99 and max probe lag, and guarded calls per second. On a throwaway local cluster (or --dsn).
Results: bench/results/loop_lag.json and .md, with the load average (the machine may be shared). Nothing is
asserted; tests/budget/test_async_app.py holds the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "harness"), str(ROOT)]

from sigledger import (  # noqa: E402
    AsyncBudgetGuard,
    AsyncCostTracker,
    AsyncDatabase,
    BudgetClient,
    BudgetGuard,
    CostRecord,
    CostTracker,
    Database,
)
from sigledger.core.localdb import LocalCluster  # noqa: E402
from sigledger.migrate import Migrator  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TASKS, CALLS, PROBE = 300, 5, 0.005


class Probe:
    def __init__(self) -> None:
        self.lags: list[float] = []
        self.running = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            started = loop.time()
            await asyncio.sleep(PROBE)
            self.lags.append(loop.time() - started - PROBE)


async def measure(work: Any) -> dict[str, float]:
    probe = Probe()
    task = asyncio.get_running_loop().create_task(probe.run())
    started = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    probe.running = False
    await task
    lags = sorted(probe.lags)
    return {
        "lag_p50_ms": round(statistics.median(lags) * 1000, 2),
        "lag_p99_ms": round(lags[int(len(lags) * 0.99) - 1] * 1000, 2),
        "lag_max_ms": round(lags[-1] * 1000, 2),
        "calls_per_s": round(TASKS * CALLS / elapsed),
        "probes": len(lags),
    }


async def baseline() -> dict[str, float]:
    async def task() -> None:
        for _ in range(CALLS):
            await asyncio.sleep(0.002)

    async def work() -> None:
        await asyncio.gather(*(task() for _ in range(TASKS)))

    return await measure(work)


async def asyncio_api(dsn: str, spool: Path, run: str) -> dict[str, float]:
    async with AsyncDatabase(dsn, min_size=4, max_size=10) as db, AsyncCostTracker(db, spool) as tracker:
        guard = AsyncBudgetGuard(db, tracker=tracker)

        async def task(t: int) -> None:
            for _i in range(CALLS):
                async with guard.reserve("lag-agent", Decimal("0.01")) as r:
                    await asyncio.sleep(0.002)
                    r.set_cost(Decimal("0.005"), model="m", provider="p")
            await tracker.record(
                CostRecord(
                    agent_id="lag-agent",
                    model="m",
                    provider="p",
                    cost_usd=Decimal("0.001"),
                    idempotency_key=f"{run}-{t}",
                )
            )

        async def work() -> None:
            await asyncio.gather(*(task(t) for t in range(TASKS)))

        return await measure(work)


async def sync_api(dsn: str, spool: Path, run: str) -> dict[str, float]:
    with Database(dsn, min_size=4, max_size=10) as db, CostTracker(db, spool) as tracker:
        guard = BudgetGuard(db, tracker=tracker)

        async def task(t: int) -> None:
            for _i in range(CALLS):
                with guard.reserve("lag-agent", Decimal("0.01")) as r:  # blocks the loop
                    await asyncio.sleep(0.002)
                    r.set_cost(Decimal("0.005"), model="m", provider="p")
            tracker.record(
                CostRecord(
                    agent_id="lag-agent",
                    model="m",
                    provider="p",
                    cost_usd=Decimal("0.001"),
                    idempotency_key=f"{run}-{t}",
                )
            )

        async def work() -> None:
            await asyncio.gather(*(task(t) for t in range(TASKS)))

        return await measure(work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dsn", default=None, help="an existing database (migrated here) instead of a local cluster"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs of each case; the median run by max lag is kept"
    )
    args = ap.parse_args()
    cluster = None
    dsn = args.dsn
    work = Path(tempfile.mkdtemp(prefix="sigledger-bench-lag-"))
    if dsn is None:
        cluster = LocalCluster(work / "pg")
        cluster.start()
        dsn = cluster.dsn("sigledger")
    load_before = os.getloadavg()
    try:
        Migrator(dsn).up()
        with Database(dsn) as db:
            client = BudgetClient(db)
            try:
                client.find_agent("lag-agent")
            except Exception:
                client.create_agent("lag-agent", Decimal(1000000))
        cases = {
            "baseline (no sigledger call)": lambda n: baseline(),
            "asyncio API": lambda n: asyncio_api(dsn, work / f"spool-a{n}", f"lag-a{n}-{time.time_ns()}"),
            "sync API called from async code": lambda n: sync_api(
                dsn, work / f"spool-s{n}", f"lag-s{n}-{time.time_ns()}"
            ),
        }
        rows = []
        for name, case in cases.items():
            runs = sorted((asyncio.run(case(n)) for n in range(args.repeat)), key=lambda r: r["lag_max_ms"])
            rows.append({"case": name, **runs[len(runs) // 2]})
            print(name, rows[-1], flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()
    result = {
        "benchmark": "loop_lag",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tasks": TASKS,
        "calls_per_task": CALLS,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loop_lag.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "| case | loop lag p50 ms | p99 ms | max ms | guarded calls/s |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r['case']} | {r['lag_p50_ms']} | {r['lag_p99_ms']} | {r['lag_max_ms']} | {r['calls_per_s']} |"
            for r in rows
        ),
        "",
        f"{TASKS} tasks x {CALLS} guarded calls in one loop; load average before/after (1, 5, 15 min):"
        f" {result['load_average_before']} / {result['load_average_after']} on {os.cpu_count()} CPUs;"
        f" {result['when']}.",
    ]
    (RESULTS / "loop_lag.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
