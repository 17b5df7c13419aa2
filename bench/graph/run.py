"""Neo4j projection benchmark (`make bench-graph`): not a test, a measurement on this machine.

1. Drain rate, in one run on the same data: outbox events projected per second with UNWIND batches
   (one Postgres + one Neo4j transaction per batch) against one event per transaction (batch size 1).
   Every event is a signal refresh (the signal node, its properties and its two MENTIONS links).
2. Sync lag at a steady ingest rate (default 1,000 events/s): a separate process ingests signals (row, links
   and outbox event in one transaction: `sigledger.ingest_signals`, 10 per call every 10 ms) while one worker
   follows the outbox;
   lag = Neo4j commit time - outbox created_at, per event.

Starts its own throwaway PostgreSQL cluster and Neo4j (both on loopback). Writes bench/results/graph.json
and bench/results/graph.png.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "harness"), str(ROOT)]

from sigledger.core.localdb import LocalCluster, free_port  # noqa: E402
from sigledger.graph.driver import Neo4jSettings, connect  # noqa: E402
from sigledger.graph.neo4j_server import Neo4jServer  # noqa: E402
from sigledger.graph.sink import Neo4jSink  # noqa: E402
from sigledger.graph.worker import BatchResult, SyncWorker, WorkerConfig  # noqa: E402
from sigledger.migrate import Migrator  # noqa: E402

RESULTS = ROOT / "bench" / "results"
N_ENTITIES = 200


def load(dsn: str, n_signals: int) -> None:
    with psycopg.connect(dsn) as conn:
        # Entities through the API (names become aliases, which ingestion resolves mentions against).
        conn.execute(
            "SELECT sigledger.create_entity('Entity ' || g, '{}', 'org') FROM generate_series(1, %s) g",
            (N_ENTITIES,),
        )
        conn.execute(
            "INSERT INTO sigledger.signals (source, external_id, occurred_at, content) "
            "SELECT 'bench', 'b-' || g, now(), 'signal content ' || g FROM generate_series(1, %s) g",
            (n_signals,),
        )
        # Two mentions per signal, spread over the entities.
        conn.execute(
            """
            WITH e AS (SELECT array_agg(id ORDER BY id) AS ids FROM sigledger.entities),
                 s AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM sigledger.signals)
            INSERT INTO sigledger.signal_entities (signal_id, entity_id)
            SELECT s.id, e.ids[1 + (s.n %% %(k)s)] FROM s, e
            UNION
            SELECT s.id, e.ids[1 + ((s.n * 7 + 3) %% %(k)s)] FROM s, e
            """,
            {"k": N_ENTITIES},
        )


def enqueue_signals(dsn: str, limit: int | None = None) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT sigledger._graph_enqueue('signal', ARRAY(SELECT id FROM sigledger.signals "
            "WHERE source = 'bench' ORDER BY id LIMIT %s), 'bench.refresh')",
            (limit,),
        ).fetchone()
    return int(row[0]) if row else 0


def drain(worker: SyncWorker) -> tuple[int, float]:
    t0 = time.perf_counter()
    total = worker.run(once=True)
    return total.acked, time.perf_counter() - t0


def ingest(dsn: str, rate: int, seconds: float, per_tx: int, stop_at: mp.Value) -> None:  # type: ignore[valid-type]
    """Separate process: `rate` events/s as `per_tx` events per transaction, paced on a fixed schedule."""
    interval = per_tx / rate
    # The real ingestion API (issue 4): signal rows, mention resolution, links and outbox rows in one call.
    sql = "SELECT count(*) FROM sigledger.ingest_signals(p_batch => %s::jsonb)"
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.monotonic()
        tick = 0
        while True:
            due = start + tick * interval
            if due - start >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            batch = [
                {
                    "source": "lag",
                    "external_id": f"{tick}-{i}",
                    "occurred_at": "2026-01-01T00:00:00Z",
                    "content": "live signal",
                    "mentions": [
                        f"Entity {1 + (tick + i) % N_ENTITIES}",
                        f"Entity {1 + (tick * 7 + i) % N_ENTITIES}",
                    ],
                }
                for i in range(per_tx)
            ]
            conn.execute(sql, (json.dumps(batch),))
            tick += 1
        stop_at.value = tick * per_tx  # type: ignore[attr-defined]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signals", type=int, default=20000, help="events drained in the batched run")
    parser.add_argument("--per-event", type=int, default=1500, help="events drained one per transaction")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--lag-rate", type=int, default=1000, help="ingested events per second")
    parser.add_argument("--lag-seconds", type=float, default=20.0)
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sigledger-bench-graph-") as tmp:
        cluster = LocalCluster(Path(tmp) / "pg")
        server = Neo4jServer(
            state_dir=Path(tmp) / "neo4j", port=free_port(), password="bench-" + str(time.time_ns())
        )
        try:
            print("starting PostgreSQL and Neo4j ...", flush=True)
            cluster.start()
            server.start()
            dsn = cluster.dsn()
            Migrator(dsn).up()
            assert server.password is not None
            settings = Neo4jSettings(uri=server.uri, user=server.user, password=server.password)
            driver = connect(settings)
            sink = Neo4jSink(driver)
            sink.ensure_constraints()

            print(f"loading {args.signals} signals ...", flush=True)
            load(dsn, args.signals)
            # Warm-up: project everything once (entities, signals, links), so both measured runs update an
            # existing graph and the JIT and caches are warm.
            with psycopg.connect(dsn) as conn:
                conn.execute("SELECT sigledger._graph_enqueue_all()")
            SyncWorker(dsn, sink, WorkerConfig(batch_size=args.batch_size)).run(once=True)

            enqueue_signals(dsn)
            batched_n, batched_s = drain(SyncWorker(dsn, sink, WorkerConfig(batch_size=args.batch_size)))
            batched_rate = batched_n / batched_s
            print(
                f"batched ({args.batch_size}/tx): {batched_n} events in {batched_s:.2f}s = {batched_rate:.0f}/s"
            )

            enqueue_signals(dsn, args.per_event)
            single_n, single_s = drain(SyncWorker(dsn, sink, WorkerConfig(batch_size=1)))
            single_rate = single_n / single_s
            print(f"one event per transaction: {single_n} events in {single_s:.2f}s = {single_rate:.0f}/s")

            print(f"lag: ingesting {args.lag_rate} events/s for {args.lag_seconds:.0f}s ...", flush=True)
            lags: list[float] = []
            follower = SyncWorker(dsn, sink, WorkerConfig(batch_size=args.batch_size, poll_interval=0.5))

            def collect(res: BatchResult) -> None:
                lags.extend(res.lags)

            thread = threading.Thread(target=lambda: follower.run(once=False, on_batch=collect), daemon=True)
            thread.start()
            time.sleep(1.0)  # the follower is listening
            ctx = mp.get_context("spawn")
            ingested = ctx.Value("q", 0)
            t0 = time.monotonic()
            proc = ctx.Process(target=ingest, args=(dsn, args.lag_rate, args.lag_seconds, 10, ingested))
            proc.start()
            proc.join()
            ingest_s = time.monotonic() - t0
            deadline = time.monotonic() + 120
            while len(lags) < ingested.value and time.monotonic() < deadline:
                time.sleep(0.1)
            follower.stop_event.set()
            thread.join(timeout=30)
            follower.close()
            achieved_rate = ingested.value / ingest_s

            result: dict[str, Any] = {
                "machine": {
                    "cpus": mp.cpu_count(),
                    "python": platform.python_version(),
                    "neo4j": "5.26.0",
                    # The machine is shared: the 1-minute load average says how contended the run was.
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                },
                "drain": {
                    "batched": {
                        "batch_size": args.batch_size,
                        "events": batched_n,
                        "seconds": round(batched_s, 3),
                        "events_per_s": round(batched_rate, 1),
                    },
                    "per_event": {
                        "batch_size": 1,
                        "events": single_n,
                        "seconds": round(single_s, 3),
                        "events_per_s": round(single_rate, 1),
                    },
                    "speedup": round(batched_rate / single_rate, 1),
                },
                "lag": {
                    "target_rate": args.lag_rate,
                    "achieved_ingest_rate": round(achieved_rate, 1),
                    "events": int(ingested.value),
                    "projected": len(lags),
                    "p50_s": round(percentile(lags, 50), 4),
                    "p95_s": round(percentile(lags, 95), 4),
                    "p99_s": round(percentile(lags, 99), 4),
                    "max_s": round(max(lags), 4),
                    "mean_s": round(statistics.fmean(lags), 4),
                },
                "targets": {"batched_events_per_s": 5000, "speedup": 20, "lag_p95_s": 1.0},
            }
            driver.close()
        finally:
            server.stop()
            cluster.stop()

    (RESULTS / "graph.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(result, lags, RESULTS / "graph.png")
    print(json.dumps(result, indent=2))
    return 0


def chart(result: dict[str, Any], lags: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    d = result["drain"]
    names = [f"UNWIND batches\n({d['batched']['batch_size']}/tx)", "one event\nper transaction"]
    rates = [d["batched"]["events_per_s"], d["per_event"]["events_per_s"]]
    bars = a.bar(names, rates, color=["#2b7bba", "#c44e52"])
    a.bar_label(bars, labels=[f"{r:,.0f}/s" for r in rates])
    a.axhline(5000, color="grey", linestyle="--", linewidth=1, label="target 5,000/s")
    a.set_ylabel("outbox events projected per second")
    a.set_title(f"Drain rate ({d['speedup']}x)")
    a.legend(loc="upper right")
    lag = result["lag"]
    ms = sorted(x * 1000 for x in lags)
    b.plot(ms, [i / len(ms) for i in range(1, len(ms) + 1)], color="#2b7bba")
    b.axvline(lag["p95_s"] * 1000, color="#c44e52", linestyle="--", label=f"p95 {lag['p95_s'] * 1000:.0f} ms")
    b.axvline(1000, color="grey", linestyle=":", label="target p95 1 s")
    b.set_xlabel("sync lag: outbox created_at -> Neo4j commit (ms)")
    b.set_ylabel("fraction of events")
    b.set_title(f"Lag at {lag['achieved_ingest_rate']:.0f} ingested events/s")
    b.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
