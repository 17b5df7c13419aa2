"""Upgrade under load (`make bench-migrate`): not a test, a measurement on this machine.

A seed-era database at V3_010 with 1,000,000 ledger rows (loaded with generate_series) is upgraded to head
while an application writes to it the way the seed's code did, from 4 threads: a ledger row, then its agent's
spend, in one transaction (the issue's deadlock pattern); and a signal with a link to an entity. Measured, for
this release and, in the same run on a copy of the same data, for the first release's files and runner (the
baseline: git archive of the commit that released V3_000 .. V7_001):
- the worst application lock wait: the longest time any application session was seen waiting for a lock
  (pg_stat_activity sampled every 20 ms), and the slowest application statement (lock waits included);
- application errors by SQLSTATE (deadlocks, lock timeouts, anything), and runner retries;
- the upgrade's duration, and the load average beside them (the machine is shared: absolute waits are noisy).
Starts its own throwaway PostgreSQL cluster. Writes bench/results/migrate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "harness"), str(ROOT)]

from sigledger.core.localdb import LocalCluster  # noqa: E402
from sigledger.migrate import Migrator, Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FIRST_RELEASE = "53e7851f087b20dce8fcfb24c854cff1f17c258f"
AGENTS = 100
APP = "bench-app"


def load(dsn: str, ledger_rows: int, first: Path) -> None:
    """V3_010 as the first release's runner made it (so that both releases upgrade the same database; this one
    accepts the first release's checksums), and its data."""
    out = subprocess.run(
        [sys.executable, "-m", "sigledger", "migrate", "up", "--to", "V3_010", "--dsn", dsn],
        capture_output=True,
        text=True,
        cwd=first,
        env={**os.environ, "PYTHONPATH": str(first / "harness")},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sigledger.agent_registry (name, budget_limit_usd, current_cost_usd) "
            "SELECT 'agent-' || g, 1000, 0 FROM generate_series(1, %s) g",
            (AGENTS,),
        )
        conn.execute(
            "INSERT INTO sigledger.entities (name) SELECT 'Company ' || g FROM generate_series(1, 1000) g"
        )
        conn.execute(
            "INSERT INTO sigledger.entity_aliases (canonical_entity_id, alias) SELECT id, name FROM sigledger.entities"
        )
        conn.execute(
            "INSERT INTO sigledger.signals (source, external_id, occurred_at) "
            "SELECT 'seed', 's-' || g, now() - g * interval '1 minute' FROM generate_series(1, 100000) g"
        )
        conn.execute(
            """INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, tokens_input,
                   tokens_output, cost_usd, created_at)
               SELECT 'seed-' || g, a.ids[1 + g %% %s], 'gpt-4o', 'openai', 100 + g %% 900, 20 + g %% 300,
                      (g %% 1000) / 100000.0, now() - interval '400 days' + g * (interval '399 days' / %s)
                 FROM generate_series(1, %s) g,
                      (SELECT array_agg(id ORDER BY name) AS ids FROM sigledger.agent_registry) a""",
            (AGENTS, ledger_rows, ledger_rows),
        )
        conn.execute("VACUUM ANALYZE")


class Load:
    """The seed's application: 4 threads writing until stopped; every statement timed, every error kept."""

    def __init__(self, dsn: str, threads: int = 4) -> None:
        self.dsn, self.threads = dsn, threads
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.transactions = 0
        self.max_lock_wait = 0.0
        self.lock = threading.Lock()
        self.workers: list[threading.Thread] = []

    def _worker(self, n: int) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name=APP) as conn:
            agents = [
                r[0] for r in conn.execute("SELECT id FROM sigledger.agent_registry ORDER BY name").fetchall()
            ]
            entities = [r[0] for r in conn.execute("SELECT id FROM sigledger.entities LIMIT 200").fetchall()]
            i = 0
            while not self.stop.is_set():
                i += 1
                key = f"app-{n}-{i}-{time.monotonic_ns()}"
                statements: list[tuple[str, tuple[Any, ...]]]
                if i % 4:
                    agent = agents[(n * 7 + i) % len(agents)]
                    statements = [
                        (
                            "INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, "
                            "tokens_input, tokens_output, cost_usd) VALUES (%s, %s, 'gpt-4o', 'openai', 100, 20, 0.001)",
                            (key, agent),
                        ),
                        (
                            "UPDATE sigledger.agent_registry SET current_cost_usd = current_cost_usd + 0.001 "
                            "WHERE id = %s",
                            (agent,),
                        ),
                    ]
                else:
                    statements = [
                        (
                            "INSERT INTO sigledger.signals (id, source, external_id, occurred_at) "
                            "VALUES (gen_random_uuid(), 'app', %s, now())",
                            (key,),
                        ),
                        (
                            "INSERT INTO sigledger.signal_entities (signal_id, entity_id, mention) "
                            "SELECT id, %s, 'Company' FROM sigledger.signals WHERE source = 'app' AND external_id = %s",
                            (entities[i % len(entities)], key),
                        ),
                    ]
                try:
                    with conn.transaction():
                        for sql, params in statements:
                            started = time.monotonic()
                            conn.execute(sql.encode(), params)
                            with self.lock:
                                self.latencies.append(time.monotonic() - started)
                    with self.lock:
                        self.transactions += 1
                except psycopg.Error as exc:
                    with self.lock:
                        self.errors[exc.sqlstate or "?"] = self.errors.get(exc.sqlstate or "?", 0) + 1
                    time.sleep(0.01)

    def _monitor(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.wait(0.02):
                row = conn.execute(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0) "
                    "FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (APP,),
                ).fetchone()
                self.max_lock_wait = max(self.max_lock_wait, float(row[0]) if row else 0.0)

    def start(self) -> None:
        self.workers = [
            threading.Thread(target=self._worker, args=(n,), daemon=True) for n in range(self.threads)
        ]
        self.workers.append(threading.Thread(target=self._monitor, daemon=True))
        for w in self.workers:
            w.start()

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        for w in self.workers:
            w.join(timeout=60)
        ordered = sorted(self.latencies)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

        return {
            "transactions": self.transactions,
            "errors": dict(self.errors),
            "worst_lock_wait_s": round(self.max_lock_wait, 3),
            "worst_statement_s": round(ordered[-1] if ordered else 0.0, 3),
            "p99_statement_ms": round(pct(0.99) * 1000, 2),
            "p50_statement_ms": round(pct(0.5) * 1000, 2),
        }


def first_release(tmp: Path) -> Path:
    archive = tmp / "first.tar"
    subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "archive",
            "-o",
            str(archive),
            FIRST_RELEASE,
            "pyproject.toml",
            "harness",
            "sql",
        ],
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(tmp / "first", filter="data")
    return tmp / "first"


def upgrade(dsn: str, release: Path | None, warmup: float) -> dict[str, Any]:
    """Upgrade to head under the application load; `release` None = this release, else a checkout to run."""
    baseline = Load(dsn)
    baseline.start()
    time.sleep(warmup)
    before = baseline.finish()
    load = Load(dsn)
    load.start()
    time.sleep(1.0)
    loadavg_before = os.getloadavg()[0]
    started = time.monotonic()
    log: list[str] = []
    error = None
    if release is None:
        try:
            Migrator(dsn, settings=Settings(retire_group_logins=True), log=log.append).up()
        except Exception as exc:
            error = str(exc)
    else:
        out = subprocess.run(
            [sys.executable, "-m", "sigledger", "migrate", "up", "--dsn", dsn],
            capture_output=True,
            text=True,
            cwd=release,
            env={**os.environ, "PYTHONPATH": str(release / "harness")},
            timeout=3600,
        )
        log = out.stdout.splitlines()
        error = out.stderr.strip() if out.returncode else None
    duration = time.monotonic() - started
    time.sleep(1.0)
    during = load.finish()
    return {
        "upgrade_s": round(duration, 1),
        "runner_error": error,
        "runner_retries": sum(1 for line in log if ", retry " in line),
        "load_before_upgrade": before,
        "load_during_upgrade": during,
        "loadavg_1min": [round(loadavg_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ledger-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of load measured before the upgrade"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the first release's run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sigledger-bench-migrate-") as tmp:
        cluster = LocalCluster(Path(tmp) / "pg")
        cluster.start()
        try:
            with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
                conn.execute("CREATE DATABASE seed")
            first = first_release(Path(tmp))
            started = time.monotonic()
            load(cluster.dsn("seed"), args.ledger_rows, first)
            loaded = time.monotonic() - started
            print(f"loaded V3_010 with {args.ledger_rows:,} ledger rows in {loaded:.0f}s", flush=True)
            with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
                conn.execute("CREATE DATABASE first_release TEMPLATE seed")
                conn.execute("CREATE DATABASE this_release TEMPLATE seed")
            results: dict[str, Any] = {}
            if not args.no_baseline:
                results["first_release"] = upgrade(cluster.dsn("first_release"), first, args.warmup)
                print("first release:", json.dumps(results["first_release"]), flush=True)
            results["this_release"] = upgrade(cluster.dsn("this_release"), None, args.warmup)
            print("this release:", json.dumps(results["this_release"]), flush=True)
        finally:
            cluster.destroy()
    data = {
        "settings": {"ledger_rows": args.ledger_rows, "app_threads": 4, "load_seconds": round(loaded, 1)},
        "machine": {"system": platform.platform(), "cpus": os.cpu_count()},
        "targets": {"worst_lock_wait_s": 2.0, "app_errors": 0},
        **results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "migrate.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
