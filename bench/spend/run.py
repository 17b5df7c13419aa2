"""Spend report benchmark (``make bench-report``): the read API on a big ledger.

Loads 10M ledger rows spread over the last 12 months and 1,000 agents (in 50 teams under 5 organisations, agent
budgets monthly), as a database that has run for a year looks: one ledger partition per month. Then, as the
real sigledger_readonly role, it measures the latency of
  (a) one agent's month by day and model        spend_report(month, '{day,model}', agent)   target p95 <= 50 ms
  (b) all agents' month                         spend_report(month, '{agent}')              target p95 <= 1 s
  (c) the near-limit list                       budgets_near_limit(0.8)                     target p95 <= 100 ms
and what the read side costs the budget hot path: reserve+settle (every settle above its estimate, the worst
case for the read side's partial index on overruns) with and without that index, interleaved, as a ratio.
Results: bench/results/report.json and report.md, with the load average beside the figures (the machine may be
shared: the ratios and the load say how much to trust the absolute numbers).

Loading: rows are generated in SQL (generate_series) straight into the monthly partitions with the ledger's
row triggers off (session_replication_role = replica) and the key registry filled afterwards in one pass; the
indexes are the real ones. It takes minutes. --data-dir keeps the loaded cluster for another run.
"""

from __future__ import annotations

import argparse
import json
import math
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

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "harness"), str(ROOT)]

import psycopg  # noqa: E402
from sigledger.core.localdb import LocalCluster  # noqa: E402
from sigledger.migrate import Migrator  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGETS_MS = {"a_agent_month_by_day_model": 50.0, "b_all_agents_month": 1000.0, "c_near_limit": 100.0}
MODELS = [
    ("openai", "gpt-4o", "2.50", "10.00"),
    ("openai", "gpt-4o-mini", "0.15", "0.60"),
    ("anthropic", "claude-sonnet", "3.00", "15.00"),
    ("anthropic", "claude-haiku", "0.80", "4.00"),
    ("google", "gemini-pro", "1.25", "5.00"),
    ("google", "gemini-flash", "0.10", "0.40"),
    ("mistral", "mistral-large", "2.00", "6.00"),
    ("openai", "text-embedding-3-small", "0.02", "0"),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def month_start(offset: int) -> str:
    """First day (UTC) of the month `offset` months from now, as SQL text."""
    return f"(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '{offset} months') AT TIME ZONE 'UTC'"


def load(dsn: str, rows: int, agents: int, months: int) -> None:
    Migrator(dsn).up()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE SCHEMA IF NOT EXISTS bench")
        if c.execute("SELECT to_regclass('bench.loaded')").fetchone() != (None,):
            log("ledger already loaded")
            return
        log(f"agents and budgets: {agents} agents, 50 teams, 5 orgs")
        c.execute("""
            CREATE TABLE bench.agents (n integer PRIMARY KEY, id uuid NOT NULL, budget_id bigint);
            DO $$
            DECLARE o bigint; t bigint;
            BEGIN
                FOR i IN 1..5 LOOP
                    o := sigledger.create_group_budget('org', 'org-' || i, 500000, p_period => 'monthly');
                    FOR j IN 1..10 LOOP
                        t := sigledger.create_group_budget('team', 'team-' || i || '-' || j, 50000,
                                                           p_period => 'monthly', p_parent_budget_id => o);
                    END LOOP;
                END LOOP;
            END $$;
        """)
        c.execute(
            """
            INSERT INTO bench.agents (n, id)
            SELECT g, sigledger.create_agent('agent-' || g, 100 + (g %% 7) * 50, p_period => 'monthly',
                       p_parent_budget_id => (SELECT id FROM sigledger.budget WHERE level = 'team'
                                               ORDER BY id OFFSET (g - 1) %% 50 LIMIT 1))
              FROM generate_series(1, %s) g
            """,
            (agents,),
        )
        c.execute(
            "UPDATE bench.agents a SET budget_id = b.id FROM sigledger.budget b WHERE b.agent_id = a.id"
        )
        for provider, model, pin, pout in MODELS:
            c.execute(
                "SELECT sigledger.add_model_price(%s, %s, %s::numeric, %s::numeric, now() - interval '2 years')",
                (provider, model, pin, pout),
            )

        # a database that has run for a year: the partition layout of `months` months of monthly partitions
        log(f"partitions: {months} past months, the legacy partition before them")
        first = month_start(-(months - 1))
        c.execute(
            "SET ROLE sigledger_owner"
        )  # partitions belong to the owner, as _ensure_ledger_partitions makes them
        c.execute(f"""
            DO $$
            DECLARE v_first timestamptz := {first};
            BEGIN
                ALTER TABLE sigledger.llm_cost_log DETACH PARTITION sigledger.llm_cost_log_legacy;
                ALTER TABLE sigledger.llm_cost_log_legacy DROP CONSTRAINT llm_cost_log_legacy_range;
                EXECUTE format('ALTER TABLE sigledger.llm_cost_log_legacy ADD CONSTRAINT llm_cost_log_legacy_range '
                               'CHECK (created_at < %L)', v_first);
                EXECUTE format('ALTER TABLE sigledger.llm_cost_log ATTACH PARTITION sigledger.llm_cost_log_legacy '
                               'FOR VALUES FROM (MINVALUE) TO (%L)', v_first);
                FOR i IN 0 .. {months + 2} LOOP
                    DECLARE
                        v_from timestamptz := (date_trunc('month', v_first AT TIME ZONE 'UTC') + make_interval(months => i)) AT TIME ZONE 'UTC';
                        v_to timestamptz := (date_trunc('month', v_first AT TIME ZONE 'UTC') + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
                        v_name text := 'llm_cost_log_p' || to_char(v_from AT TIME ZONE 'UTC', 'YYYYMM');
                    BEGIN
                        CONTINUE WHEN to_regclass('sigledger.' || v_name) IS NOT NULL;
                        EXECUTE format('CREATE TABLE sigledger.%I PARTITION OF sigledger.llm_cost_log FOR VALUES FROM (%L) TO (%L)',
                                       v_name, v_from, v_to);
                        EXECUTE format('ALTER TABLE sigledger.%I ADD CONSTRAINT %I PRIMARY KEY (id)', v_name, v_name || '_pkey');
                        EXECUTE format('CREATE TRIGGER llm_cost_log_append_only_truncate BEFORE TRUNCATE ON sigledger.%I '
                                       'FOR EACH STATEMENT EXECUTE FUNCTION sigledger._llm_cost_log_partition_truncate()', v_name);
                    END;
                END LOOP;
            END $$;
        """)
        c.execute("RESET ROLE")
        c.execute(
            "CREATE TABLE bench.models AS SELECT row_number() OVER () - 1 AS k, * FROM "
            "(VALUES " + ", ".join(f"('{p}', '{m}')" for p, m, _, _ in MODELS) + ") v(provider, model)"
        )
        # rows spread evenly over [first month, now), in chunks (one statement per chunk, progress logged)
        chunks = 20
        per = rows // chunks
        c.execute(
            "SET session_replication_role = replica"
        )  # the row triggers off: the registry is filled below
        span = c.execute(f"SELECT extract(epoch FROM now() - {first})").fetchone()
        assert span is not None
        seconds = float(span[0])
        for k in range(chunks):
            t0 = time.monotonic()
            c.execute(
                f"""
                INSERT INTO sigledger.llm_cost_log (id, idempotency_key, agent_id, provider, model, tokens_input,
                       tokens_output, cost_usd, cost_source, charged_at, created_at, recorded_at, metadata)
                OVERRIDING SYSTEM VALUE
                SELECT g, 'bench:' || g, a.id, m.provider, m.model, 200 + (g * 7919) %% 4000, 50 + (g * 104729) %% 1500,
                       round(((200 + (g * 7919) %% 4000) * 3 + (50 + (g * 104729) %% 1500) * 12) / 1000000.0, 6),
                       'client', ts, ts, ts,
                       CASE WHEN g %% 3 = 0 THEN jsonb_build_object('tag', 'feature-' || (g %% 11)) ELSE '{{}}'::jsonb END
                  FROM generate_series(%s::bigint, %s::bigint) g
                 CROSS JOIN LATERAL (SELECT {first} + make_interval(secs => %s * (g - 1) / %s) AS ts) t
                  JOIN bench.agents a ON a.n = 1 + (g * 2654435761) %% %s
                  JOIN bench.models m ON m.k = (g * 40503) %% {len(MODELS)}
                """,
                (k * per + 1, (k + 1) * per, seconds, rows, agents),
            )
            log(f"ledger rows {(k + 1) * per:,} / {rows:,} ({time.monotonic() - t0:.0f} s for this chunk)")
        c.execute("RESET session_replication_role")
        c.execute(f"SELECT setval('sigledger.llm_cost_log_id_seq', {rows})")
        log("key registry")
        c.execute(
            "INSERT INTO sigledger.llm_cost_log_key (idempotency_key, ledger_id, reservation_id, created_at) "
            "SELECT idempotency_key, id, reservation_id, created_at FROM sigledger.llm_cost_log"
        )
        log("budget spend of the current month, from the ledger")
        c.execute(f"""
            INSERT INTO sigledger.budget_spend (budget_id, period_start, cap_usd, spent_usd, excess_usd)
            SELECT x.budget_id, {month_start(0)}, b.limit_usd, x.spent, greatest(0, x.spent - b.limit_usd)
              FROM (SELECT c.budget_id, sum(l.cost_usd) AS spent
                      FROM sigledger.llm_cost_log l
                      JOIN (SELECT a.agent_id, a.id AS budget_id FROM sigledger.budget a WHERE a.level = 'agent'
                            UNION ALL SELECT a.agent_id, a.parent_id FROM sigledger.budget a WHERE a.level = 'agent'
                            UNION ALL SELECT a.agent_id, t.parent_id FROM sigledger.budget a
                                        JOIN sigledger.budget t ON t.id = a.parent_id WHERE a.level = 'agent') c
                        ON c.agent_id = l.agent_id
                     WHERE l.created_at >= {month_start(0)}
                     GROUP BY c.budget_id) x
              JOIN sigledger.budget b ON b.id = x.budget_id
            ON CONFLICT DO NOTHING
        """)
        log("VACUUM ANALYZE")
        c.execute("VACUUM ANALYZE sigledger.llm_cost_log")
        c.execute("VACUUM ANALYZE sigledger.llm_cost_log_key")
        c.execute("ANALYZE")
        c.execute("CREATE TABLE bench.loaded AS SELECT now() AS at")


def calibrate(dsn: str, agents: int) -> None:
    """Limits that put about one agent in ten at 80-100% of its limit this month, the rest well below; and the
    hot path's own agents (under their own team and org, limits out of reach), so that the hot-path runs do
    not touch the budgets the near-limit list reads."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"""
            UPDATE sigledger.budget b
               SET limit_usd = round(s.spent_usd / CASE WHEN a.n % 10 = 0 THEN 0.8 + (a.n % 7) * 0.03 ELSE 0.3 END, 2)
              FROM sigledger.budget_spend s, bench.agents a
             WHERE s.budget_id = b.id AND a.budget_id = b.id AND s.period_start = {month_start(0)}
        """)
        c.execute(f"""
            UPDATE sigledger.budget_spend s SET cap_usd = b.limit_usd, excess_usd = greatest(0, s.spent_usd - b.limit_usd)
              FROM sigledger.budget b, bench.agents a
             WHERE b.id = s.budget_id AND a.budget_id = b.id AND s.period_start = {month_start(0)}
        """)
        # groups: a month of the load is about $2,700 an org, $270 a team: teams near their limit, orgs not
        c.execute(
            "UPDATE sigledger.budget SET limit_usd = CASE level WHEN 'org' THEN 4000 ELSE 300 END"
            " WHERE level <> 'agent' AND name NOT LIKE 'hot-%'"
        )
        c.execute(
            "UPDATE sigledger.budget_spend s SET cap_usd = b.limit_usd,"
            " excess_usd = greatest(0, s.spent_usd - b.limit_usd)"
            " FROM sigledger.budget b WHERE b.id = s.budget_id AND b.level <> 'agent' AND b.name NOT LIKE 'hot-%'"
        )
        if c.execute("SELECT to_regclass('bench.hot_agents')").fetchone() != (None,):
            return
        c.execute("CREATE TABLE bench.hot_agents (n integer PRIMARY KEY, id uuid NOT NULL)")
        c.execute(
            """
            WITH o AS (SELECT sigledger.create_group_budget('org', 'hot-org', 1000000000, p_period => 'monthly') AS id),
                 t AS (SELECT sigledger.create_group_budget('team', 'hot-team', 1000000000, p_period => 'monthly',
                                                            p_parent_budget_id => o.id) AS id FROM o)
            INSERT INTO bench.hot_agents (n, id)
            SELECT g, sigledger.create_agent('hot-' || g, 1000000, p_period => 'monthly', p_parent_budget_id => t.id)
              FROM t, generate_series(1, %s) g
            """,
            (agents,),
        )


def measure(dsn: str, agents: int, iterations: int) -> dict[str, Any]:
    """p50/p95/max of each query, as sigledger_readonly, queries interleaved (a neighbour's burst hits all)."""
    ro = dsn.replace("user=postgres", "user=sigledger_readonly")
    rng = random.Random(15)
    times: dict[str, list[float]] = {k: [] for k in TARGETS_MS}
    rows: dict[str, int] = {}
    with psycopg.connect(dsn) as c:
        ids = [r[0] for r in c.execute("SELECT id FROM bench.agents ORDER BY n").fetchall()]
        bounds = c.execute(f"SELECT {month_start(-1)}, {month_start(0)}").fetchone()
    assert bounds is not None
    since, until = bounds
    queries = {
        "a_agent_month_by_day_model": (
            "SELECT * FROM sigledger.spend_report(%s, %s, '{day,model}', p_agent_id => %s)",
            lambda: (since, until, rng.choice(ids)),
            iterations,
        ),
        "b_all_agents_month": (
            "SELECT * FROM sigledger.spend_report(%s, %s, '{agent}')",
            lambda: (since, until),
            max(5, iterations // 5),
        ),
        "c_near_limit": ("SELECT * FROM sigledger.budgets_near_limit(0.8)", lambda: (), iterations),
    }
    with psycopg.connect(ro, autocommit=True) as conn:
        for name, (sql, args, _n) in queries.items():  # warm-up, and the row counts
            rows[name] = len(conn.execute(sql, args()).fetchall())
        for i in range(iterations):
            for name, (sql, args, n) in queries.items():
                if i >= n:
                    continue
                params = args()
                t0 = time.perf_counter()
                conn.execute(sql, params).fetchall()
                times[name].append((time.perf_counter() - t0) * 1000)
    out = {}
    for name, values in times.items():
        values.sort()
        out[name] = {
            "n": len(values),
            "rows": rows[name],
            "p50_ms": round(statistics.median(values), 1),
            "p95_ms": round(values[max(0, math.ceil(0.95 * len(values)) - 1)], 1),  # nearest rank
            "max_ms": round(values[-1], 1),
            "target_p95_ms": TARGETS_MS[name],
        }
        log(f"{name}: {out[name]}")
    return out


def pgbench_goodput(dsn: str, clients: int, duration: float, agents: int) -> float:
    out = subprocess.run(
        [
            "pgbench",
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 4)),
            "-T",
            str(int(duration)),
            "-D",
            f"agents={agents}",
            "-f",
            str(HERE / "overrun_reserve_settle.sql"),
            dsn,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise RuntimeError(out)


def hot_path(dsn: str, agents: int, duration: float, repeat: int) -> dict[str, Any]:
    """reserve+settle (each settle an overrun) with and without budget_reservation_overrun_closed_idx."""
    idx = "budget_reservation_overrun_closed_idx"
    create = (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {idx} ON sigledger.budget_reservation (closed_at) "
        "WHERE overrun_usd > 0"
    )
    best = {"with_index": 0.0, "without_index": 0.0}
    loads = []
    for _ in range(repeat):
        for variant in ("with_index", "without_index"):
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(
                    create
                    if variant == "with_index"
                    else f"DROP INDEX CONCURRENTLY IF EXISTS sigledger.{idx}"
                )
            tps = pgbench_goodput(dsn, 8, duration, agents)
            loads.append(loadavg()[0])
            best[variant] = max(best[variant], tps)
            log(f"hot path {variant}: {tps:.0f} reserve+settle/s")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(create)
    return {
        "clients": 8,
        "duration_s": duration,
        "best_of": repeat,
        "reserve_settle_per_s": {k: round(v, 1) for k, v in best.items()},
        "ratio_with_vs_without": round(best["with_index"] / max(best["without_index"], 0.1), 3),
        "load_1m_during": loads,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Spend report benchmark, {report['generated_at']}, {report['machine']['cpus']} CPUs (shared), "
        f"{report['settings']['rows']:,} ledger rows over {report['settings']['months']} months and "
        f"{report['settings']['agents']} agents; load average before/after: {report['load_before']} / "
        f"{report['load_after']}.",
        "",
        "| query | rows | p50 | p95 | max | target p95 | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["queries"].items():
        verdict = "met" if r["p95_ms"] <= r["target_p95_ms"] else "**not met**"
        lines.append(
            f"| {name} | {r['rows']} | {r['p50_ms']} ms | {r['p95_ms']} ms | {r['max_ms']} ms "
            f"| {r['target_p95_ms']:.0f} ms | {verdict} |"
        )
    hp = report["hot_path"]
    lines += [
        "",
        f"Budget hot path (reserve + settle above the estimate, {hp['clients']} clients, {hp['duration_s']} s, best of "
        f"{hp['best_of']}): with the read side's overrun index {hp['reserve_settle_per_s']['with_index']}/s, without "
        f"{hp['reserve_settle_per_s']['without_index']}/s, ratio {hp['ratio_with_vs_without']} "
        f"(load during: {hp['load_1m_during']}).",
        "",
        "No rollup table: the reports read the ledger's partitions and its (agent_id, charged_at) index.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument(
        "--iterations", type=int, default=100, help="runs of (a) and (c); (b) runs a fifth as often"
    )
    ap.add_argument("--hot-path-duration", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=2, help="hot-path runs per variant, best kept")
    ap.add_argument("--data-dir", default=None, help="keep the loaded cluster here (and reuse it next time)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "report.json"))
    args = ap.parse_args()
    if shutil.which("pgbench") is None:
        sys.exit("pgbench not found (install postgresql-client-15)")
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="sigledger-bench-report-"))
    cluster = LocalCluster(root / "pg")
    cluster.start()
    dsn = cluster.dsn("sigledger")
    load_before = loadavg()
    try:
        t0 = time.monotonic()
        load(dsn, args.rows, args.agents, args.months)
        calibrate(dsn, args.agents)
        load_s = round(time.monotonic() - t0)
        queries = measure(dsn, args.agents, args.iterations)
        hp = hot_path(dsn, args.agents, args.hot_path_duration, args.repeat)
    finally:
        if args.data_dir:
            cluster.stop()
        else:
            cluster.destroy()
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": {
            "rows": args.rows,
            "agents": args.agents,
            "months": args.months,
            "iterations": args.iterations,
            "load_seconds": load_s,
        },
        "load_before": load_before,
        "load_after": loadavg(),
        "queries": queries,
        "hot_path": hp,
    }
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
