"""Budget benchmark (``make bench-budget``): pgbench drives, in one run,

  (a) sigledger's budget path: reserve + settle, and check_and_record_budget; on the hot agent also with its
      budget split over 8 and over 32 slices (set_budget_slices);
  (b) the baselines of the same run: the bare SQL doing the same writes with no checks (the physical limit
      of the schema), and, on the hot agent, the raw single-row UPDATE of its spend row (the ceiling of any
      design that keeps a budget in one row);
  (c) the seed's design: FOR UPDATE NOWAIT + expected version, check now and record later;

on one hot agent and on 1000 agents, at 32 and 64 clients (--clients): goodput (costs recorded per second),
p50/p99 latency of one script run, each figure with its ratio to its baseline of the same run, and the load
average beside it; for hard $1.00 budgets the overspend; and the ledger's batch path (bench/budget/ledger.py:
record_costs against the bare statement and COPY). Results: bench/results/budget.json, .md, .png. Not a test:
nothing is asserted; the targets are reported as ratios.

By default it runs on a throwaway cluster of its own (default server settings: fsync and synchronous_commit on),
so the numbers are not those of the test cluster (fsync off). --dsn uses an existing database instead (it is
migrated; the bench schema is recreated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "harness"), str(ROOT)]

import psycopg  # noqa: E402
from sigledger.core.localdb import LocalCluster  # noqa: E402
from sigledger.migrate import Migrator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ledger  # noqa: E402
from designs import DESIGNS, OVERSPEND, SCRIPTS, SLICE_COUNTS, VARIABLES  # noqa: E402
from present import chart, markdown, ratios  # noqa: E402

HERE = Path(__file__).resolve().parent


def loadavg() -> float:
    return round(os.getloadavg()[0], 1)


def pgbench(
    dsn: str,
    script: Path,
    clients: int,
    *,
    duration: float | None = None,
    transactions: int | None = None,
    variables: dict[str, str],
    logdir: Path | None = None,
) -> dict[str, Any]:
    argv = [
        "pgbench",
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(min(clients, 4)),
        "-f",
        str(script),
    ]
    argv += ["-T", str(int(duration))] if duration else ["-t", str(transactions)]
    for k, v in variables.items():
        argv += ["-D", f"{k}={v}"]
    if logdir is not None:
        argv += ["-l", f"--log-prefix={logdir}/tx"]
    argv.append(dsn)
    res = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=logdir or HERE)
    if res.returncode != 0:
        raise RuntimeError(f"pgbench failed ({' '.join(argv)}):\n{res.stdout}\n{res.stderr}")
    processed = int(re.search(r"number of transactions actually processed: (\d+)", res.stdout).group(1))  # type: ignore[union-attr]
    lat: list[float] = []
    # per client: (start of its first script run, end of its last, end of every run), from the log's
    # "client_id transaction_no latency_us script_no epoch_s epoch_us" lines
    clients_seen: dict[str, tuple[float, float, list[float]]] = {}
    if logdir is not None:
        for f in logdir.glob("tx*"):
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 6:
                    lat.append(int(parts[2]) / 1000.0)
                    end = int(parts[4]) + int(parts[5]) / 1e6
                    first, last, ends = clients_seen.get(parts[0], (end - int(parts[2]) / 1e6, end, []))
                    ends.append(end)
                    clients_seen[parts[0]] = (min(first, end - int(parts[2]) / 1e6), max(last, end), ends)
            f.unlink()
    return {"attempts": processed, "latencies_ms": lat, "steady_tps": steady_rate(clients_seen)}


def steady_rate(clients: dict[str, tuple[float, float, list[float]]], warmup: float = 1.0) -> float | None:
    """Script runs per second once each client is past its first `warmup` seconds: per client, the runs that
    ended after its first second over the time from then to its last run's end, summed over the clients. A new
    backend pays its first calls' compile and planning (PL/pgSQL functions more than a bare statement); an
    application on a connection pool pays them once, not at every 3-s point."""
    rate = 0.0
    for first, last, ends in clients.values():
        span = last - first - warmup
        if span < 0.5:  # a client that ran less than 1.5 s has no steady part worth measuring
            return None
        rate += sum(1 for e in ends if e >= first + warmup) / span
    return rate if clients else None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def count_recorded(conn: psycopg.Connection[Any], kind: str) -> int:
    table = "sigledger.llm_cost_log" if kind == "ledger" else "bench.seed_ledger"
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def setup(dsn: str, agents: int) -> None:
    Migrator(dsn).up()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((HERE / "setup.sql").read_text())
        conn.execute(
            "SELECT sigledger.create_agent('bench-' || n || '-' || gen_random_uuid(), 1000000000) FROM generate_series(1, %s) n",
            (agents,),
        )
        conn.execute(
            """INSERT INTO bench.agents (n, id, budget_id)
               SELECT row_number() OVER (ORDER BY b.id), b.agent_id, b.id FROM sigledger.budget b
                JOIN sigledger.agent_registry a ON a.id = b.agent_id WHERE a.name LIKE 'bench-%%'
                ORDER BY b.id LIMIT %s""",
            (agents,),
        )
        # the period rows exist up front, so the bare SQL (which only updates) has rows to update
        conn.execute(
            """INSERT INTO sigledger.budget_spend (budget_id, period_start, cap_usd)
               SELECT budget_id, timestamptz '1970-01-01 00:00:00+00', 1000000000 FROM bench.agents
               ON CONFLICT DO NOTHING"""
        )
        conn.execute(
            "INSERT INTO bench.seed_agent (id, budget_limit) SELECT n, 1000000000 FROM generate_series(1, %s) n",
            (agents,),
        )
        # the hot agents of the sliced runs: one per slice count, its budget over that many, the period's rows
        # in place
        for n in SLICE_COUNTS:
            sliced = conn.execute(
                "SELECT sigledger.create_agent('bench-sliced-' || gen_random_uuid(), 1000000000)"
            ).fetchone()[0]  # type: ignore[index]
            conn.execute(
                "INSERT INTO bench.sliced (id, budget_id, slices) SELECT agent_id, id, %s FROM sigledger.budget"
                " WHERE agent_id = %s",
                (n, sliced),
            )
            conn.execute(
                "SELECT sigledger.set_budget_slices(budget_id, %s) FROM bench.sliced WHERE slices = %s",
                (n, n),
            )
        conn.execute(
            "SELECT sigledger.release_budget(reservation_id)"
            " FROM bench.sliced, sigledger.reserve_budget(id, 0.01, interval '1 minute')"
        )
        # a period in progress: each spend row's next alert boundary known (computed at the first charge of a
        # period otherwise, which would make the first pass over 1000 agents unlike the steady state)
        conn.execute(
            "SELECT count(sigledger._spend_crossed(budget_id, period_start, spent_usd, spent_usd))"
            " FROM sigledger.budget_spend WHERE slice = 0"
        )
        conn.execute("VACUUM ANALYZE")


def run_overspend(dsn: str, design: str, clients: int, duration: float) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        aid = conn.execute(
            "SELECT sigledger.create_agent('overspend-' || gen_random_uuid(), 1.00)"
        ).fetchone()[0]  # type: ignore[index]
        if design.endswith("_sliced"):
            conn.execute(
                "SELECT sigledger.set_budget_slices((SELECT id FROM sigledger.budget WHERE agent_id = %s), 8)",
                (aid,),
            )
        sid = int(conn.execute("SELECT coalesce(max(id), 0) + 1 FROM bench.seed_agent").fetchone()[0])  # type: ignore[index]
        conn.execute("INSERT INTO bench.seed_agent (id, budget_limit) VALUES (%s, 1.00)", (sid,))
    out = pgbench(
        dsn,
        HERE / OVERSPEND[design],
        clients,
        duration=duration,
        variables={"aid": str(aid), "sid": str(sid)},
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        if design == "c_seed":
            spent = conn.execute(
                "SELECT current_cost FROM bench.seed_agent WHERE id = %s", (sid,)
            ).fetchone()[0]  # type: ignore[index]
        else:
            spent = conn.execute(
                "SELECT sum(spent_usd) FROM sigledger.budget_status(%s::uuid)", (aid,)
            ).fetchone()[0]  # type: ignore[index]
    return {
        "design": design,
        "clients": clients,
        "attempts": out["attempts"],
        "limit_usd": 1.0,
        "spent_usd": float(spent),
        "overspend_pct": round(max(0.0, float(spent) - 1.0) * 100, 1),
    }


def measure(
    dsn: str, clients: list[int], duration: float, repeat: int, agents_n: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    # designs interleaved at each client count, each run --repeat times (the best kept for the table, every
    # round kept for the paired ratios): the machine is shared, and neighbours' load hits adjacent runs alike
    for workload, agents in (("hot", 1), ("spread", agents_n)):
        designs = [d for d, (_, _, w) in DESIGNS.items() if workload in w]
        for c in clients:
            best: dict[str, dict[str, Any]] = {}
            rounds: dict[str, list[dict[str, float | None]]] = {}
            for _ in range(repeat):
                for design in designs:
                    kind = DESIGNS[design][1]
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        before = count_recorded(conn, kind) if kind != "tx" else 0
                    load = loadavg()
                    logdir = Path(tempfile.mkdtemp(prefix="pgbench-log-"))
                    out = pgbench(
                        dsn,
                        HERE / f"{SCRIPTS.get(design, design)}.sql",
                        c,
                        duration=duration,
                        variables={"agents": str(agents), **VARIABLES.get(design, {})},
                        logdir=logdir,
                    )
                    shutil.rmtree(logdir, ignore_errors=True)
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        recorded = count_recorded(conn, kind) - before if kind != "tx" else out["attempts"]
                    # the steady-state goodput: the run's steady rate, at the run's share of recorded costs
                    steady = (
                        None
                        if out["steady_tps"] is None or not out["attempts"]
                        else out["steady_tps"] * recorded / out["attempts"]
                    )
                    # every round's figures, for the paired ratios (present.ratios): a design and its baseline
                    # run in the same round, so a drift of a neighbour's load between rounds hits both of a pair alike
                    rounds.setdefault(design, []).append(
                        {
                            "goodput": round(recorded / duration, 1),
                            "steady": None if steady is None else round(steady, 1),
                        }
                    )
                    if design not in best or recorded > best[design]["recorded"]:
                        best[design] = {
                            "attempts": out["attempts"],
                            "recorded": recorded,
                            "latencies_ms": out["latencies_ms"],
                            "loadavg": load,
                            "steady": best.get(design, {}).get("steady"),
                        }
                    if steady is not None and (best[design]["steady"] or 0) < steady:
                        best[design]["steady"] = steady
            for design in designs:
                out = best[design]
                row = {
                    "workload": workload,
                    "agents": agents,
                    "design": design,
                    "label": DESIGNS[design][0],
                    "clients": c,
                    "attempts": out["attempts"],
                    "recorded": out["recorded"],
                    "goodput": round(out["recorded"] / duration, 1),
                    "goodput_steady": None if out["steady"] is None else round(out["steady"], 1),
                    "success_pct": round(100.0 * out["recorded"] / out["attempts"], 1)
                    if out["attempts"]
                    else 0.0,
                    "p50_ms": pct(out["latencies_ms"], 0.50),
                    "p99_ms": pct(out["latencies_ms"], 0.99),
                    "loadavg": out["loadavg"],
                    "rounds": rounds[design],
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default=None, help="use this database instead of a throwaway cluster")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per pgbench run (default 3)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="rounds per point; ratios are the median of the rounds' (default 5)",
    )
    ap.add_argument("--clients", default="32,64")
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "budget.json"))
    args = ap.parse_args()
    if shutil.which("pgbench") is None:
        sys.exit("pgbench not found (install postgresql-client-15)")
    clients = [int(c) for c in args.clients.split(",")]

    cluster = None
    dsn = args.dsn
    if dsn is None:
        cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="sigledger-bench-budget-")) / "pg")
        cluster.start()
        dsn = cluster.dsn("sigledger")
    started = time.time()
    load_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        setup(dsn, args.agents)
        results = measure(dsn, clients, args.duration, args.repeat, args.agents)
        overspend = [run_overspend(dsn, d, c, 3) for d in OVERSPEND for c in (32, 64)]
        for o in overspend:
            print(json.dumps(o), flush=True)
        led = ledger.bench(dsn, repeat=args.repeat)  # the best of --repeat rounds, as the designs above
        led["loadavg"] = loadavg()
        print(json.dumps(led), flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()

    report = {
        "benchmark": "budget",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "note": "shared machine; noisy"},
        "loadavg": {"start": load_start, "end": " / ".join(f"{x:.1f}" for x in os.getloadavg())},
        "settings": {
            "duration_s": args.duration,
            "rounds": args.repeat,
            "clients": clients,
            "agents": args.agents,
            "server": "throwaway cluster, default settings" if args.dsn is None else "given --dsn",
            "cost_per_call_usd": 0.01,
            "slices": list(SLICE_COUNTS),
        },
        "runtime_s": round(time.time() - started, 1),
        "results": results,
        "ratios": ratios(results),
        "overspend": overspend,
        "ledger": led,
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    chart(results, out_path.with_suffix(".png"))
    out_path.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out_path}, {out_path.with_suffix('.png')} and {out_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
