"""Benchmark of issue 4 (not a test): `make bench-ingest`.

In one run, on a fresh database migrated by the harness:
1. signals/s through ingest_signals batches vs single ingest_signal calls (one client, 3 mentions per signal);
2. resolve_entity lookups/s and p50/p95 latency at 1,000,000 aliases vs the bare indexed SELECT it wraps
   (one client running both queries interleaved, through pgbench and through psycopg as the harness does;
   lookups/s = 1000 / mean latency in ms); target: function >= 0.9x bare;
3. merges/s of opportunities holding 100 signal links each (merge_opportunities, one client).

Results: bench/results/ingest.json and bench/results/ingest.png. The server is --dsn / SIGLEDGER_DSN (an
admin connection string; a database `sigledger_bench_ingest` is created there and dropped afterwards), or the
local cluster of `sigledger db up`, started if needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "harness"), str(ROOT)]

from sigledger.core.localdb import LocalCluster, pg_bindir  # noqa: E402
from sigledger.migrate import Migrator  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DB = "sigledger_bench_ingest"


def admin_dsn(arg: str | None) -> str:
    dsn = arg or os.environ.get("SIGLEDGER_DSN")
    if dsn:
        return make_conninfo(dsn, dbname="postgres")
    cluster = LocalCluster.default()
    cluster.start()
    return cluster.dsn("postgres")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_ingest(dsn: str, batch_signals: int, single_signals: int, batch_size: int) -> dict[str, Any]:
    rng = random.Random(1)
    names = [f"Company {i}" for i in range(2000)]

    def item(key: str) -> dict[str, Any]:
        return {
            "source": "bench",
            "external_id": key,
            "occurred_at": "2026-01-01T00:00:00Z",
            "payload": {"n": key},
            "mentions": rng.sample(names, 3),
        }

    with psycopg.connect(dsn, autocommit=True, application_name="bench-ingest") as conn:
        # warm-up: creates the 2,000 entities, so both modes below resolve known names
        conn.execute(
            "SELECT count(*) FROM sigledger.ingest_signals(%s::jsonb)",
            (
                json.dumps(
                    [{**item(f"warm-{i}"), "mentions": names[i * 100 : i * 100 + 100]} for i in range(20)]
                ),
            ),
        )
        items = [item(f"b-{i}") for i in range(batch_signals)]
        start = time.perf_counter()
        for i in range(0, len(items), batch_size):
            conn.execute(
                "SELECT count(*) FROM sigledger.ingest_signals(%s::jsonb)",
                (json.dumps(items[i : i + batch_size]),),
            )
        batch_s = time.perf_counter() - start

        singles = [item(f"s-{i}") for i in range(single_signals)]
        start = time.perf_counter()
        for it in singles:
            conn.execute(
                "SELECT * FROM sigledger.ingest_signal(%s, %s, %s::timestamptz, %s::jsonb, %s::text[])",
                (
                    it["source"],
                    it["external_id"],
                    it["occurred_at"],
                    json.dumps(it["payload"]),
                    it["mentions"],
                ),
                prepare=True,
            )
        single_s = time.perf_counter() - start
        created = conn.execute("SELECT count(*) FROM sigledger.signals WHERE source = 'bench'").fetchone()
        assert created and created[0] == batch_signals + single_signals + 20
    batch_rate = batch_signals / batch_s
    single_rate = single_signals / single_s
    return {
        "mentions_per_signal": 3,
        "batch_size": batch_size,
        "batch": {
            "signals": batch_signals,
            "seconds": round(batch_s, 3),
            "signals_per_s": round(batch_rate, 1),
        },
        "single": {
            "signals": single_signals,
            "seconds": round(single_s, 3),
            "signals_per_s": round(single_rate, 1),
        },
        "batch_over_single": round(batch_rate / single_rate, 2),
    }


def load_aliases(dsn: str, count: int) -> float:
    start = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(
            f"INSERT INTO sigledger.entities (name) SELECT 'Org ' || i FROM generate_series(1, {count}) i"
        )
        conn.execute(
            "INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id) SELECT name, id FROM sigledger.entities "
            "WHERE name LIKE 'Org %'"
        )
        conn.execute("VACUUM ANALYZE sigledger.entities")
        conn.execute("VACUUM ANALYZE sigledger.entity_aliases")
        total = conn.execute("SELECT count(*) FROM sigledger.entity_aliases").fetchone()
        assert total and total[0] >= count
    return time.perf_counter() - start


def stats(latencies_ms: list[float]) -> dict[str, Any]:
    mean = statistics.fmean(latencies_ms)
    return {
        "lookups_per_s": round(1000.0 / mean, 1),  # one client issuing only this query, back to back
        "mean_ms": round(mean, 4),
        "p50_ms": round(percentile(latencies_ms, 0.50), 4),
        "p95_ms": round(percentile(latencies_ms, 0.95), 4),
        "samples": len(latencies_ms),
    }


def pgbench_interleaved(dsn: str, scripts: dict[str, str], seconds: int) -> dict[str, dict[str, Any]]:
    """One pgbench client running both scripts at random (equal weights), so that noise from a shared machine
    falls on both alike; per-script latencies come from pgbench's per-transaction log."""
    params = conninfo_to_dict(dsn)
    names = list(scripts)
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            str(pg_bindir() / "pgbench"),
            "-n",
            "-M",
            "prepared",
            "-c",
            "1",
            "-T",
            str(seconds),
            "-l",
            "--log-prefix",
            str(Path(tmp) / "log"),
        ]
        for name in names:
            path = Path(tmp) / f"{name}.sql"
            path.write_text(scripts[name])
            argv += ["-f", f"{path}@1"]
        env = {
            **os.environ,
            "PGHOST": str(params.get("host", "")),
            "PGPORT": str(params.get("port", "5432")),
            "PGUSER": str(params.get("user", "postgres")),
            "PGDATABASE": str(params["dbname"]),
        }
        subprocess.run(argv, capture_output=True, text=True, env=env, check=True, cwd=tmp)
        per_script: dict[int, list[float]] = {i: [] for i in range(len(names))}
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                # client_id transaction_no time_us script_no time_epoch time_us_fraction
                fields = line.split()
                per_script[int(fields[3])].append(int(fields[2]) / 1000.0)
    return {name: stats(per_script[i]) for i, name in enumerate(names)}


def python_interleaved(
    dsn: str, queries: dict[str, str], aliases: int, count: int
) -> dict[str, dict[str, Any]]:
    """The harness's own path: psycopg, prepared statements, one lookup per round trip; the queries alternate
    call by call on one connection each."""
    rng = random.Random(3)
    conns = {name: psycopg.connect(dsn, autocommit=True) for name in queries}
    latencies: dict[str, list[float]] = {name: [] for name in queries}
    try:
        for i in range(count + 200):
            name_arg = (f"Org {rng.randint(1, aliases)}",)
            for name, sql in queries.items():
                t0 = time.perf_counter()
                row = conns[name].execute(sql, name_arg, prepare=True).fetchone()
                elapsed = (time.perf_counter() - t0) * 1000
                assert row is not None and row[0] is not None
                if i >= 200:  # the first calls prepare and fill the plan caches
                    latencies[name].append(elapsed)
    finally:
        for conn in conns.values():
            conn.close()
    return {name: stats(values) for name, values in latencies.items()}


def bench_resolve(dsn: str, aliases: int, seconds: int, python_lookups: int) -> dict[str, Any]:
    load_s = load_aliases(dsn, aliases)
    pick = f"\\set n random(1, {aliases})\n"
    scripts = {
        "bare_select": pick
        + "SELECT canonical_entity_id FROM sigledger.entity_aliases WHERE lower(alias) = lower('Org ' || :n);\n",
        "resolve_entity": pick + "SELECT sigledger.resolve_entity('Org ' || :n);\n",
        "lookup_view": pick
        + "SELECT entity_id FROM sigledger.entity_alias_lookup WHERE alias_key = lower(btrim('Org ' || :n));\n",
    }
    queries = {
        "bare_select": "SELECT canonical_entity_id FROM sigledger.entity_aliases WHERE lower(alias) = lower(%s)",
        "resolve_entity": "SELECT sigledger.resolve_entity(%s)",
        "lookup_view": "SELECT entity_id FROM sigledger.entity_alias_lookup WHERE alias_key = lower(btrim(%s))",
    }
    bench = pgbench_interleaved(dsn, scripts, seconds)
    python = python_interleaved(dsn, queries, aliases, python_lookups)
    ratio = bench["resolve_entity"]["lookups_per_s"] / bench["bare_select"]["lookups_per_s"]
    python_ratio = python["resolve_entity"]["lookups_per_s"] / python["bare_select"]["lookups_per_s"]
    view_ratio = bench["lookup_view"]["lookups_per_s"] / bench["bare_select"]["lookups_per_s"]
    return {
        "aliases": aliases,
        "load_seconds": round(load_s, 1),
        "method": "one client, both queries interleaved at random; lookups/s = 1000 / mean latency (ms)",
        "pgbench": {"seconds": seconds, "mode": "prepared", **bench},
        "python_client": {"calls_each": python_lookups, **python},
        "function_over_bare": round(ratio, 3),
        "python_function_over_bare": round(python_ratio, 3),
        "target": 0.9,
        "meets_target": ratio >= 0.9,
        "python_meets_target": python_ratio >= 0.9,
        "view_over_bare": round(view_ratio, 3),
    }


def bench_merges(dsn: str, merges: int, links: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True, application_name="bench-merge") as conn:
        signals = [
            r[0] for r in conn.execute("SELECT id FROM sigledger.signals WHERE source = 'bench' LIMIT 5000")
        ]
        assert len(signals) >= 2 * links
        rng = random.Random(2)
        pairs = []
        for i in range(merges):
            pair = []
            for role in ("target", "source"):
                opp = conn.execute("SELECT sigledger.create_opportunity(%s)", (f"{role} {i}",)).fetchone()
                assert opp
                conn.execute(
                    "SELECT sigledger.link_signals(%s, %s::uuid[])", (opp[0], rng.sample(signals, links))
                )
                pair.append(opp[0])
            pairs.append(pair)
        conn.execute("VACUUM ANALYZE sigledger.opportunity_signals")
        start = time.perf_counter()
        moved = 0
        for target, source in pairs:
            row = conn.execute(
                "SELECT moved_links FROM sigledger.merge_opportunities(%s, ARRAY[%s]::uuid[])",
                (target, source),
                prepare=True,
            ).fetchone()
            assert row
            moved += row[0]
        seconds = time.perf_counter() - start
    return {
        "merges": merges,
        "links_per_opportunity": links,
        "seconds": round(seconds, 3),
        "merges_per_s": round(merges / seconds, 1),
        "links_moved": moved,
    }


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
    ing = result["ingest"]
    axes[0].bar(
        [f"ingest_signals\n(batch {ing['batch_size']})", "ingest_signal\n(one per call)"],
        [ing["batch"]["signals_per_s"], ing["single"]["signals_per_s"]],
        color=["#2a7", "#888"],
    )
    axes[0].set_title(f"signals/s ({ing['batch_over_single']}x)")
    res = result["resolve"]
    names = ["bare_select", "resolve_entity", "lookup_view"]
    width = 0.38
    for offset, (client, color) in enumerate((("pgbench", "#27a"), ("python_client", "#7ac"))):
        xs = [i + (offset - 0.5) * width for i in range(len(names))]
        bars = axes[1].bar(
            xs,
            [res[client][n]["lookups_per_s"] for n in names],
            width,
            color=color,
            label=client.replace("_", " "),
        )
        for bar, n in zip(bars, names, strict=True):
            axes[1].annotate(
                f"p50 {res[client][n]['p50_ms']:.3f}\np95 {res[client][n]['p95_ms']:.3f} ms",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    axes[1].set_xticks([0, 1, 2], ["bare indexed\nSELECT", "resolve_entity()", "entity_alias_lookup\nview"])
    axes[1].legend(fontsize=8, loc="upper right")
    axes[1].set_title(
        f"lookups/s at {res['aliases']:,} aliases (one client)\n"
        f"function/bare: pgbench {res['function_over_bare']}x, psycopg {res['python_function_over_bare']}x"
        f" (target 0.9x); view/bare {res['view_over_bare']}x",
        fontsize=9,
    )
    mer = result["merge"]
    axes[2].bar(
        [f"merge_opportunities\n({mer['links_per_opportunity']} links each)"],
        [mer["merges_per_s"]],
        color="#a72",
    )
    axes[2].set_title("merges/s")
    for ax in axes:
        ax.margins(y=0.2)
    fig.suptitle(
        f"sigledger issue 4 benchmark ({result['machine']['cpus']} CPUs, {result['machine']['postgres']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dsn", help="admin connection string (default: SIGLEDGER_DSN, else the local cluster)"
    )
    parser.add_argument("--aliases", type=int, default=1_000_000)
    parser.add_argument("--batch-signals", type=int, default=20_000)
    parser.add_argument("--single-signals", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--pgbench-seconds", type=int, default=30)
    parser.add_argument("--python-lookups", type=int, default=20_000)
    parser.add_argument("--merges", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()
    if shutil.which(str(pg_bindir() / "pgbench")) is None:
        sys.exit(f"pgbench not found in {pg_bindir()}")

    admin = admin_dsn(args.dsn)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
        version = conn.execute("SHOW server_version").fetchone()
    dsn = make_conninfo(admin, dbname=DB)
    started = time.perf_counter()
    try:
        Migrator(dsn).up()
        print("ingest ...", flush=True)
        ingest = bench_ingest(dsn, args.batch_signals, args.single_signals, args.batch_size)
        print(json.dumps(ingest), flush=True)
        print("merges ...", flush=True)
        merge = bench_merges(dsn, args.merges, 100)
        print(json.dumps(merge), flush=True)
        print(f"resolve at {args.aliases:,} aliases ...", flush=True)
        resolve = bench_resolve(dsn, args.aliases, args.pgbench_seconds, args.python_lookups)
        print(json.dumps(resolve), flush=True)
    finally:
        if not args.keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    result = {
        "benchmark": "ingest",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "postgres": f"PostgreSQL {version[0] if version else '?'}",
        },
        "seconds_total": round(time.perf_counter() - started, 1),
        "ingest": ingest,
        "resolve": resolve,
        "merge": merge,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(result, RESULTS / "ingest.png")
    print(f"wrote {RESULTS / 'ingest.json'} and {RESULTS / 'ingest.png'}")


if __name__ == "__main__":
    main()
