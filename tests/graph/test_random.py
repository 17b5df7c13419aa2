"""A randomized run against the real thing: 3 sync worker processes follow the outbox while this process
ingests signals, creates, merges and links entities and opportunities; one worker is SIGKILLed and replaced
and another one's Postgres backend is terminated mid-run. `graph verify --consistent` runs while they work;
once the outbox is drained, Neo4j must equal Postgres (plain verify, and the CLI's).

The seed is printed on failure (SIGLEDGER_TEST_SEED reproduces a run's choices; the interleavings are the
machine's)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from sigledger.graph.sink import Neo4jSink
from sigledger.graph.verify import verify

from .conftest import Changes, cli, cypher, status, wait_until, worker_process

OPERATIONS = 100


class Workload:
    def __init__(self, changes: Changes, rng: random.Random) -> None:
        self.c = changes
        self.rng = rng
        self.entities = [changes.entity(f"Ent {i}") for i in range(24)]
        self.signals = [self.c.signal(f"s-{i}", entities=rng.sample(self.entities, 2)) for i in range(40)]
        self.opportunities = [
            self.c.opportunity(f"Opp {i}", signals=rng.sample(self.signals, 4)) for i in range(12)
        ]
        # Entities to be merged away right after signals mention them (projected before the run starts).
        self.losers = [changes.entity(f"Loser {i}") for i in range(OPERATIONS // 2)]
        self.n = 0
        self.claimed = 0
        self.acked = 0

    def ingest(self, n: int, always: list[str], some: list[str]) -> list[str]:
        """n signals in one ingest_signals call, each mentioning ``always`` and one of ``some``."""
        batch = [
            {
                "source": "random",
                "external_id": f"r-{self.n}-{k}",
                "occurred_at": "2026-01-01T00:00:00Z",
                "mentions": [self.c.names[e] for e in [*always, self.rng.choice(some)]],
            }
            for k in range(n)
        ]
        rows = self.c.conn.execute(
            "SELECT signal_id::text FROM sigledger.ingest_signals(p_batch => %s::jsonb)", (json.dumps(batch),)
        ).fetchall()
        self.signals.extend(r[0] for r in rows)
        return [r[0] for r in rows]

    def wait_idle(self) -> None:
        """Until nothing is pending; at most two seconds."""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            row = self.c.conn.execute("SELECT pending FROM sigledger.graph_outbox_status()").fetchone()
            if row and row[0] == 0:
                return
            time.sleep(0.01)

    def wait_claimed(self, signals: list[str]) -> None:
        """Until a worker holds one of these signals (its projection lock, see sigledger._graph_try_lock) or
        every one was projected already; at most a second."""
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            row = self.c.conn.execute(
                "SELECT EXISTS (SELECT FROM pg_locks l WHERE l.locktype = 'advisory' AND l.objsubid = 2 "
                "  AND l.classid::int = hashtext('sigledger.graph') "
                "  AND l.objid::int = ANY (SELECT hashtext('signal:' || x) FROM unnest(%s::text[]) x)), "
                "NOT EXISTS (SELECT FROM sigledger.outbox o WHERE o.aggregate_id = ANY (%s::uuid[]))",
                (signals, signals),
            ).fetchone()
            if row and row[0]:
                self.claimed += 1
                return
            if row and row[1]:
                self.acked += 1
                return
            time.sleep(0.002)

    def step(self) -> str:
        self.n += 1
        r = self.rng.random()
        if r < 0.45 and self.losers:
            # The race: signals mentioning an entity, then that entity merged away at once, while
            # the workers are projecting the signals.
            loser = self.losers.pop()
            others = self.rng.sample(self.entities, 2)
            racing = self.rng.random() < 0.7
            if racing:
                self.wait_idle()  # workers that are not behind pick up the signals at once
            fresh = self.ingest(self.rng.randint(10, 40), [loser], others)
            if racing:
                self.wait_claimed(fresh)  # merge while a worker holds its snapshot of the signals
            self.c.merge_entities(self.rng.choice(self.entities), [loser])
            return "ingest and merge"
        if r < 0.60 and len(self.entities) > 8:
            target, *sources = self.rng.sample(self.entities, self.rng.choice((2, 3)))
            self.c.merge_entities(target, sources)
            self.entities = [e for e in self.entities if e not in sources]
            return "merge entities"
        if r < 0.72 and len(self.opportunities) > 3:
            target, source = self.rng.sample(self.opportunities, 2)
            self.c.merge_opportunities(target, [source])
            self.opportunities.remove(source)
            return "merge opportunities"
        if r < 0.84:
            self.c.conn.execute(
                "SELECT * FROM sigledger.link_signals(p_opportunity_id => %s::uuid, p_signal_ids => %s::uuid[])",
                (self.rng.choice(self.opportunities), self.rng.sample(self.signals, 3)),
            )
            return "link"
        if r < 0.92:
            self.entities.append(self.c.entity(f"New {self.n}"))
            return "entity"
        self.opportunities.append(
            self.c.opportunity(f"Opp n{self.n}", signals=self.rng.sample(self.signals, 2))
        )
        return "opportunity"


def _terminate_backend(dsn: str, name: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_three_workers_with_merges_a_kill_and_a_lost_session_end_exact(
    sink: Neo4jSink, changes: Changes, db_dsn: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("SIGLEDGER_TEST_SEED", str(random.SystemRandom().randrange(10**6))))
    rng = random.Random(seed)
    load = Workload(changes, rng)
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> None:
        procs[name] = worker_process(
            db_dsn,
            tmp_path / f"{name}.log",
            "--follow",
            "--batch-size",
            "15",
            "--poll-interval",
            "0.2",
            name=name,
        )

    def logs() -> str:
        return (
            f"seed {seed}; {load.claimed} merges while a worker held the signals, {load.acked} after\n"
            + "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
        )

    for i in range(3):
        start(f"rw{i}")
    wait_until(lambda: status(db_dsn)["pending"] == 0, 120, "the initial graph to be projected")
    try:
        deadline = time.monotonic() + 120
        for n in range(OPERATIONS):
            load.step()
            if n == OPERATIONS // 3:
                procs["rw0"].send_signal(signal.SIGKILL)  # mid-batch or between batches: nothing is lost
                procs["rw0"].wait(30)
                start("rw3")
            if n == OPERATIONS // 2:
                _terminate_backend(db_dsn, "rw1")  # its batch rolls back; it reconnects by itself
            if n == 2 * OPERATIONS // 3:
                # While the workers run: exact per aggregate, never a false alarm.
                drift = verify(db_dsn, sink, consistent=True)
                assert drift.clean, (drift.as_dict(), logs())
            assert time.monotonic() < deadline, f"the workload did not finish in time\n{logs()}"
        wait_until(lambda: status(db_dsn)["pending"] == 0, 180, f"the outbox to drain\n{logs()}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(60)

    st: dict[str, Any] = status(db_dsn)
    assert st["dead"] == 0, logs()
    drift = verify(db_dsn, sink)
    assert drift.clean, (drift.as_dict(), logs())
    result = cli("graph", "verify", dsn=db_dsn)
    assert result.returncode == 0, result.stdout + result.stderr + logs()
    # What the run did: merges happened, and the graph has exactly the live aggregates.
    live = len(load.entities) + len(load.losers)
    assert cypher(sink, "MATCH (e:Entity) RETURN count(e) AS n") == [{"n": live}]
    assert cypher(sink, "MATCH (o:Opportunity) RETURN count(o) AS n") == [{"n": len(load.opportunities)}]
