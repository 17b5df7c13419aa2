"""Profile of the budget path (``make bench-budget-profile``): where the time of one call goes.

On a throwaway cluster started with pg_stat_statements (track = all, track_planning = on) and
track_functions = all, each design of bench/budget/run.py runs N times on one client (so that the time is the
CPU of the call, not lock waits), then the statistics are read back:

- statements per call (nested statements executed per top-level call), planning vs execution time;
- the statements that take the time, and the functions' self time per call (pg_stat_user_functions);
- micro-measures of what the issue names: a function SET clause, the ledger's key-registry trigger, the
  partitioned insert, the budget chain lookup.

Output: bench/results/budget-profile.json and .md (the README of bench/budget quotes it). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "harness"), str(ROOT), str(Path(__file__).resolve().parent)]

import psycopg  # noqa: E402
import run as budget_run  # noqa: E402
from designs import SCRIPTS, VARIABLES  # noqa: E402
from sigledger.core.localdb import LocalCluster, as_server_user, pg_bindir  # noqa: E402

HERE = Path(__file__).resolve().parent
DESIGNS = [
    "a_reserve_settle",
    "a_check_and_record",
    "b_bare_reserve_settle",
    "b_bare_record",
    "c_seed",
    "a_reserve_settle_sliced",
    "a_check_and_record_sliced",
]
PRELOAD = (
    "-c shared_preload_libraries=pg_stat_statements,auto_explain -c pg_stat_statements.track=all "
    "-c pg_stat_statements.track_planning=on -c pg_stat_statements.max=5000 -c track_functions=all "
    "-c auto_explain.log_min_duration=-1 -c auto_explain.log_nested_statements=on"
)


def start_profiling_cluster(root: Path) -> LocalCluster:
    """A LocalCluster whose server loads pg_stat_statements and auto_explain (LocalCluster.start pins
    shared_preload_libraries to nothing, so the server is started here with the same options plus these)."""
    cluster = LocalCluster(root)
    cluster.init()
    opts = (
        f"-c listen_addresses=127.0.0.1 -c port={cluster.port} -c unix_socket_directories='' "
        f"-c max_connections=200 {PRELOAD}"
    )
    if os.geteuid() == 0:
        cluster.logfile.touch()
        os.chown(cluster.logfile, *_postgres_ids())
    pg_ctl = str(pg_bindir() / "pg_ctl")
    cmd = [
        pg_ctl,
        "start",
        "-w",
        "-t",
        "60",
        "-D",
        str(cluster.datadir),
        "-l",
        str(cluster.logfile),
        "-o",
        opts,
    ]
    subprocess.run(as_server_user(cmd), check=True, capture_output=True)
    cluster._create_database()  # the database LocalCluster.start creates
    return cluster


def _postgres_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def pgbench_n(dsn: str, script: Path, transactions: int, variables: dict[str, str]) -> float:
    argv = ["pgbench", "-n", "-M", "prepared", "-c", "1", "-t", str(transactions), "-f", str(script)]
    for k, v in variables.items():
        argv += ["-D", f"{k}={v}"]
    argv.append(dsn)
    started = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=HERE)
    if res.returncode != 0:
        raise RuntimeError(f"pgbench failed: {res.stdout}\n{res.stderr}")
    return time.perf_counter() - started


def profile_design(dsn: str, design: str, transactions: int, agents: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
        conn.execute("SELECT pg_stat_reset()")
    wall = pgbench_n(
        dsn,
        HERE / f"{SCRIPTS.get(design, design)}.sql",
        transactions,
        {"agents": str(agents), **VARIABLES.get(design, {})},
    )
    time.sleep(0.6)  # function statistics reach the collector at the end of each backend's transactions
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            """SELECT toplevel, calls, total_plan_time, total_exec_time, plans, rows, query
                 FROM pg_stat_statements
                WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND query !~* '^(BEGIN|COMMIT|SET|SHOW|select pg_stat)'"""
        ).fetchall()
        funcs = conn.execute(
            """SELECT schemaname || '.' || funcname, calls, self_time, total_time
                 FROM pg_stat_user_functions ORDER BY self_time DESC"""
        ).fetchall()
    top = [r for r in rows if r[0]]
    nested = [r for r in rows if not r[0]]
    top_calls = sum(r[1] for r in top)
    scripts = transactions
    out: dict[str, Any] = {
        "design": design,
        "transactions": scripts,
        "wall_ms_per_script": round(wall * 1000 / scripts, 3),
        "toplevel_statements_per_script": round(top_calls / scripts, 2),
        "nested_statements_per_script": round(sum(r[1] for r in nested) / scripts, 2),
        "plan_ms_per_script": round(sum(r[2] for r in rows if r[0]) / scripts, 4),
        "nested_plan_ms_per_script": round(sum(r[2] for r in nested) / scripts, 4),
        "exec_ms_per_script": round(sum(r[3] for r in top) / scripts, 4),
        "nested_plans_per_script": round(sum(r[4] for r in nested) / scripts, 2),
        "statements": [
            {
                "toplevel": r[0],
                "per_script": round(r[1] / scripts, 2),
                "exec_us_per_call": round(1000 * r[3] / max(r[1], 1), 1),
                "plan_us_per_call": round(1000 * r[2] / max(r[1], 1), 1),
                "plans_per_call": round(r[4] / max(r[1], 1), 2),
                "query": re.sub(r"\s+", " ", r[6])[:160],
            }
            for r in sorted(rows, key=lambda r: -r[3])[:14]
        ],
        "functions": [
            {
                "function": f[0],
                "per_script": round(f[1] / scripts, 2),
                "self_us_per_script": round(1000 * f[2] / scripts, 1),
                "total_us_per_script": round(1000 * f[3] / scripts, 1),
            }
            for f in funcs
            if f[1] > 0
        ][:14],
    }
    return out


MICRO = {
    # one helper call from PL/pgSQL: with and without a SET clause (the GUC save/restore and the search_path
    # recomputation it forces), 20,000 calls
    "helper call, SET search_path clause": """
        CREATE OR REPLACE FUNCTION bench.h_set(p numeric) RETURNS numeric LANGUAGE plpgsql
        SET search_path = sigledger, pg_temp AS $$ BEGIN RETURN p + 1; END $$;
        DO $$ DECLARE x numeric := 0; BEGIN FOR i IN 1..20000 LOOP x := bench.h_set(x); END LOOP; END $$;""",
    "helper call, no SET clause": """
        CREATE OR REPLACE FUNCTION bench.h_noset(p numeric) RETURNS numeric LANGUAGE plpgsql AS $$
        BEGIN RETURN p + 1; END $$;
        DO $$ DECLARE x numeric := 0; BEGIN FOR i IN 1..20000 LOOP x := bench.h_noset(x); END LOOP; END $$;""",
    "inline expression (no call)": """
        DO $$ DECLARE x numeric := 0; BEGIN FOR i IN 1..20000 LOOP x := x + 1; END LOOP; END $$;""",
}


def micro(dsn: str) -> dict[str, float]:
    out: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, sql in MICRO.items():
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                conn.execute(sql)
                best = min(best, time.perf_counter() - t0)
            out[name] = round(best * 1e6 / 20000, 2)  # microseconds per call
        # the ledger insert: partitioned with its key-registry trigger, against a plain table with the same
        # columns and checks (no trigger, no partitions), 5,000 rows one statement each
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench.plain_ledger (LIKE sigledger.llm_cost_log INCLUDING DEFAULTS "
            "INCLUDING CONSTRAINTS INCLUDING IDENTITY)"
        )
        agent = conn.execute("SELECT id FROM bench.agents WHERE n = 1").fetchone()[0]  # type: ignore[index]
        for name, table in (
            ("ledger insert, partitioned + key registry (us/row)", "sigledger.llm_cost_log"),
            ("ledger insert, plain table same columns (us/row)", "bench.plain_ledger"),
        ):
            t0 = time.perf_counter()
            conn.execute(
                f"""DO $$ BEGIN FOR i IN 1..5000 LOOP
                      INSERT INTO {table} (idempotency_key, agent_id, provider, model, cost_usd, charged_at)
                      VALUES ('micro:' || gen_random_uuid(), '{agent}', 'p', 'm', 0.01, now());
                    END LOOP; END $$"""
            )
            out[name] = round((time.perf_counter() - t0) * 1e6 / 5000, 2)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Budget profile, {report['generated_at']}, load average {report['load_average']} "
        f"on {report['cpus']} shared CPUs; {report['transactions']} scripts per design on one client.",
        "",
        "| design | wall ms/script | top-level stmts | nested stmts | plans (nested) | plan ms | exec ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in report["designs"]:
        lines.append(
            f"| {d['design']} | {d['wall_ms_per_script']} | {d['toplevel_statements_per_script']} "
            f"| {d['nested_statements_per_script']} | {d['nested_plans_per_script']} "
            f"| {d['plan_ms_per_script'] + d['nested_plan_ms_per_script']:.4f} | {d['exec_ms_per_script']} |"
        )
    for d in report["designs"]:
        lines += [
            "",
            f"### {d['design']}",
            "",
            "| per script | exec us/call | plan us/call | statement |",
            "|---|---|---|---|",
        ]
        for s in d["statements"]:
            q = s["query"].replace("|", "\\|")
            lines.append(
                f"| {s['per_script']}{'' if not s['toplevel'] else ' (top)'} | {s['exec_us_per_call']} "
                f"| {s['plan_us_per_call']} | `{q}` |"
            )
        if d["functions"]:
            lines += [
                "",
                "| function | calls/script | self us/script | total us/script |",
                "|---|---|---|---|",
            ]
            for f in d["functions"]:
                lines.append(
                    f"| {f['function']} | {f['per_script']} | {f['self_us_per_script']} | {f['total_us_per_script']} |"
                )
    lines += ["", "Micro-measures (best of 3):", ""]
    lines += [f"- {k}: {v} us" for k, v in report["micro"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transactions", type=int, default=2000, help="scripts per design (default 2000)")
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--designs", default=",".join(DESIGNS))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "budget-profile.json"))
    args = ap.parse_args()
    cluster = start_profiling_cluster(Path(tempfile.mkdtemp(prefix="sigledger-profile-")) / "pg")
    try:
        dsn = cluster.dsn("sigledger")
        budget_run.setup(dsn, args.agents)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        designs = []
        for design in args.designs.split(","):
            if not (HERE / f"{SCRIPTS.get(design, design)}.sql").is_file():
                continue
            d = profile_design(dsn, design, args.transactions, args.agents)
            designs.append(d)
            print(
                json.dumps({k: v for k, v in d.items() if k not in ("statements", "functions")}), flush=True
            )
        report = {
            "benchmark": "budget-profile",
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
            "cpus": os.cpu_count(),
            "transactions": args.transactions,
            "designs": designs,
            "micro": micro(dsn),
        }
    finally:
        cluster.destroy()
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
