"""Worker processes for tests/ingest/test_concurrency.py (run as scripts, one OS process each).

    python tests/ingest/load_workers.py ROLE DSN SEED ITERATIONS

ROLE is ingest | merge | entity-merge. Every call runs in its own transaction as the app role; any database
error is recorded by SQLSTATE (a worker never stops on one). The JSON report goes to stdout.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from typing import Any

import psycopg


def ingest(conn: psycopg.Connection, rng: random.Random, seed: int, iterations: int) -> dict[str, Any]:
    names = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sigledger.entity_with_aliases WHERE merged_into IS NULL"
        ).fetchall()
    ]
    opps = [str(r[0]) for r in conn.execute("SELECT id FROM sigledger.opportunity_overview").fetchall()]
    created: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    errors: Counter[str] = Counter()
    for it in range(iterations):
        batch = []
        for j in range(12):
            # half the keys are shared by every ingest worker: they race on the unique key
            key = f"shared-{it}-{j}" if j % 2 else f"w{seed}-{it}-{j}"
            mentions = [
                rng.choice(names).upper() if rng.random() < 0.3 else rng.choice(names) for _ in range(2)
            ]
            if rng.random() < 0.3:
                mentions.append(
                    f"NewCo-{it % 5}-{j % 3}"
                )  # unknown names, created by whoever gets there first
            batch.append(
                {
                    "source": "load",
                    "external_id": key,
                    "occurred_at": "2026-03-01T00:00:00Z",
                    "mentions": mentions,
                }
            )
        try:
            rows = conn.execute(
                "SELECT item, signal_id, status FROM sigledger.ingest_signals(%s::jsonb)",
                (json.dumps(batch),),
            ).fetchall()
        except psycopg.Error as exc:
            errors[exc.sqlstate or "unknown"] += 1
            continue
        new = [(str(sid), batch[item - 1]["mentions"]) for item, sid, status in rows if status == "created"]
        created += [{"signal_id": sid, "mentions": m} for sid, m in new]
        if new:
            opp = rng.choice(opps)
            try:
                row = conn.execute(
                    "SELECT opportunity_id FROM sigledger.link_signals(%s, %s::uuid[])",
                    (opp, [s for s, _ in new]),
                ).fetchone()
                assert row is not None
                links.append({"requested": opp, "linked_to": str(row[0]), "signals": [s for s, _ in new]})
            except psycopg.Error as exc:
                errors[exc.sqlstate or "unknown"] += 1
    return {"created": created, "links": links, "errors": errors}


def merge(
    conn: psycopg.Connection, rng: random.Random, iterations: int, fn: str, view: str
) -> dict[str, Any]:
    ids = [str(r[0]) for r in conn.execute(f"SELECT id FROM sigledger.{view}").fetchall()]
    merged = 0
    errors: Counter[str] = Counter()
    for _ in range(iterations):
        target, *sources = rng.sample(ids, rng.choice([2, 3]))
        try:
            conn.execute(f"SELECT * FROM sigledger.{fn}(%s, %s::uuid[])", (target, sources))
            merged += 1
        except psycopg.Error as exc:
            errors[exc.sqlstate or "unknown"] += 1
    return {"merged": merged, "errors": errors}


def main() -> None:
    role, dsn, seed, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True, application_name=f"load-{role}-{seed}") as conn:
        # start barrier: the test holds this advisory lock until every worker waits on it
        conn.execute("SELECT pg_advisory_lock_shared(4242)")
        conn.execute("SELECT pg_advisory_unlock_shared(4242)")
        if role == "ingest":
            report = ingest(conn, rng, seed, iterations)
        elif role == "merge":
            report = merge(conn, rng, iterations, "merge_opportunities", "opportunity_overview")
        elif role == "entity-merge":
            report = merge(conn, rng, iterations, "merge_entities", "entity_with_aliases")
        else:
            raise SystemExit(f"unknown role {role}")
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
