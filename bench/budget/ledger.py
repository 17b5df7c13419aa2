"""Ledger batch benchmark (part of ``make bench-budget``; alone: ``make bench-ledger``): rows/s of

  (a) record_costs(batch): the CostTracker's flush, batches of 1,000 rows over 50 agents (validation,
      quarantine, key registry, ledger insert, one charge per budget and period);
  (b) the bare statement doing the same writes of the same rows (ledger insert with its key registry, one spend
      update per budget), given the same JSON batch;
  (c) COPY of the same rows into a plain table with the same columns (no key, no constraint, no index): what
      the disk path alone allows;

interleaved batch by batch, one client, each the best of --repeat. Every figure is reported with its ratio to (b) and (c) of
the same run. Not a test: nothing is asserted. With --update bench/results/budget.json the run replaces that
file's ledger section (with its own load average and time; the rest stays from the last make bench-budget) and
regenerates budget.md from it; then `python bench/report.py` regenerates the README's table.
"""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from typing import Any

import psycopg

BARE = """
WITH r AS (
    SELECT x.* FROM jsonb_to_recordset(%(batch)s::jsonb)
        AS x(idempotency_key text, agent_id uuid, model text, provider text, input_tokens bigint,
             output_tokens bigint, cost_usd numeric)
), l AS (
    INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, tokens_input, tokens_output,
                                        cost_usd, charged_at)
    SELECT idempotency_key, agent_id, model, provider, input_tokens, output_tokens, cost_usd, now() FROM r
    RETURNING agent_id, cost_usd
)
UPDATE sigledger.budget_spend s SET spent_usd = s.spent_usd + c.amount
  FROM (SELECT b.id, sum(l.cost_usd) AS amount FROM l JOIN sigledger.budget b ON b.agent_id = l.agent_id
         GROUP BY b.id) c
 WHERE s.budget_id = c.id AND s.period_start = timestamptz '1970-01-01 00:00:00+00' AND s.slice = 0
"""


def setup(conn: psycopg.Connection[Any], agents: int) -> list[str]:
    ids = [
        str(r[0])
        for r in conn.execute(
            "SELECT sigledger.create_agent('ledger-bench-' || n || '-' || gen_random_uuid(), 1000000000)"
            " FROM generate_series(1, %s) n",
            (agents,),
        ).fetchall()
    ]
    conn.execute(
        """INSERT INTO sigledger.budget_spend (budget_id, period_start, cap_usd)
           SELECT id, timestamptz '1970-01-01 00:00:00+00', 1000000000 FROM sigledger.budget
            WHERE agent_id = ANY(%s::uuid[]) ON CONFLICT DO NOTHING""",
        (ids,),
    )
    conn.execute("SELECT sigledger.add_model_price('p', 'm', 1, 2, now() - interval '1 day')")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS bench.copy_ledger (LIKE sigledger.llm_cost_log INCLUDING DEFAULTS)"
    )
    conn.execute("ALTER TABLE bench.copy_ledger ALTER COLUMN id DROP NOT NULL")
    return ids


def batch(agents: list[str], size: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "idempotency_key": f"{prefix}-{i}",
            "agent_id": agents[i % len(agents)],
            "model": "m",
            "provider": "p",
            "input_tokens": 100,
            "output_tokens": 50,
            "cost_usd": str(Decimal("0.0001234567") * (1 + i % 7)),
        }
        for i in range(size)
    ]


def run_once(conn: psycopg.Connection[Any], design: str, rows: list[dict[str, Any]]) -> float:
    payload = json.dumps(rows)
    t0 = time.perf_counter()
    if design == "record_costs":
        out = conn.execute("SELECT * FROM sigledger.record_costs(%s::jsonb)", (payload,)).fetchone()
        assert out is not None and out[0] == len(rows), out
    elif design == "bare":
        conn.execute(BARE, {"batch": payload})
    else:
        with conn.cursor().copy(
            "COPY bench.copy_ledger (idempotency_key, agent_id, model, provider, tokens_input, tokens_output,"
            " cost_usd) FROM STDIN"
        ) as copy:
            for r in rows:
                copy.write_row(
                    (
                        r["idempotency_key"],
                        r["agent_id"],
                        r["model"],
                        r["provider"],
                        r["input_tokens"],
                        r["output_tokens"],
                        r["cost_usd"],
                    )
                )
    return time.perf_counter() - t0


def bench(
    dsn: str, *, agents: int = 50, size: int = 1000, batches: int = 5, repeat: int = 3
) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = setup(conn, agents)
        best: dict[str, float] = {}
        designs = ("record_costs", "bare", "copy")
        for rep in range(repeat):
            # the designs alternate batch by batch (in a rotating order), so that a burst of load on the shared
            # machine weighs on all of them alike
            elapsed = dict.fromkeys(designs, 0.0)
            for b in range(batches):
                for k in range(len(designs)):
                    design = designs[(b + k) % len(designs)]
                    rows = batch(ids, size, f"{design}-{rep}-{b}-{uuid.uuid4().hex[:8]}")
                    elapsed[design] += run_once(conn, design, rows)
            for design in designs:
                best[design] = max(best.get(design, 0.0), size * batches / elapsed[design])
    return {
        "agents": agents,
        "batch_size": size,
        "batches_per_point": batches,
        "repeat_best_of": repeat,
        "rows_per_s": {k: round(v) for k, v in best.items()},
        "ratios": {
            "record_costs_vs_bare": round(best["record_costs"] / best["bare"], 2),
            "record_costs_vs_copy": round(best["record_costs"] / best["copy"], 3),
            "bare_vs_copy": round(best["bare"] / best["copy"], 3),
        },
    }


if __name__ == "__main__":
    import argparse
    import os
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root / "harness"), str(Path(__file__).resolve().parent)]
    from sigledger.core.localdb import LocalCluster
    from sigledger.migrate import Migrator

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--update", default=None, help="a budget.json whose ledger section this run replaces")
    args = ap.parse_args()
    cluster = None
    dsn = args.dsn
    if dsn is None:
        cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="sigledger-bench-ledger-")) / "pg")
        cluster.start()
        dsn = cluster.dsn("sigledger")
    try:
        Migrator(dsn).up()
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE SCHEMA IF NOT EXISTS bench")
        led = bench(dsn, repeat=args.repeat)
        led["loadavg"] = round(os.getloadavg()[0], 1)
        led["generated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(json.dumps(led, indent=2))
    finally:
        if cluster is not None:
            cluster.destroy()
    if args.update:
        from present import markdown

        out = Path(args.update)
        report = json.loads(out.read_text())
        report["ledger"] = led
        out.write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(report))
        print(f"wrote the ledger section of {out} and {out.with_suffix('.md')}")
