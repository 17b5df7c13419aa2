"""`sigledger demo`: the main job on an embedded default (a throwaway local cluster); see sigledger/demo/run.py."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sigledger import demo


@click.command("demo")
@click.option(
    "--dsn",
    default=None,
    help="Run against this existing database (migrated if needed; names carry a per-run token) instead of "
    f"recreating the {demo.DEMO_DATABASE} database on the local cluster.",
)
@click.option(
    "--neo4j-uri",
    default=None,
    help="Project into this existing Neo4j (credentials: SIGLEDGER_NEO4J_USER / SIGLEDGER_NEO4J_PASSWORD) "
    "instead of the local one of `make neo4j-up` (started if needed, wiped each run).",
)
@click.option("--no-graph", is_flag=True, help="Leave Neo4j out (the outbox keeps the events).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of every random choice.")
@click.option(
    "--calls", type=click.IntRange(1, 100_000), default=600, show_default=True, help="Simulated LLM calls."
)
@click.option(
    "--signals",
    type=click.IntRange(0, 1_000_000),
    default=3000,
    show_default=True,
    help="Signals in the feed.",
)
@click.option(
    "--workers", type=click.IntRange(1, 64), default=8, show_default=True, help="Concurrent callers."
)
@click.option("--agents", type=click.IntRange(1, 500), default=20, show_default=True, help="Small agents.")
@click.option(
    "--outage-seconds",
    type=click.FloatRange(0, 60),
    default=1.5,
    show_default=True,
    help="Simulated budget-database outage in mid-run (0: none).",
)
@click.option(
    "--latency-ms",
    type=(click.IntRange(0, 60_000), click.IntRange(0, 60_000)),
    default=(100, 900),
    show_default=True,
    help="Simulated LLM latency range.",
)
@click.option(
    "--report-json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the report as JSON.",
)
@click.option(
    "--spool-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the cost tracker spools while the database is unreachable (default .sigledger/demo).",
)
def group(
    dsn: str | None,
    neo4j_uri: str | None,
    no_graph: bool,
    seed: int,
    calls: int,
    signals: int,
    workers: int,
    agents: int,
    outage_seconds: float,
    latency_ms: tuple[int, int],
    report_json: Path | None,
    spool_dir: Path | None,
) -> None:
    """Run the whole pipeline once and report: budgets under concurrent simulated LLM calls, signal ingestion,
    opportunity merges, graph sync.

    Exit codes: 0 every check held; 1 a check failed (an agent over its cap, recorded spend different from the
    acknowledged costs, reconciliation drift, a hold left open, costs left in the spool, graph drift); 130 / 143 stopped by
    SIGINT / SIGTERM after a clean shutdown with every check held.
    """
    if latency_ms[0] > latency_ms[1]:
        raise click.BadParameter("the range must be low high", param_hint="--latency-ms")
    cfg = demo.DemoConfig(
        seed=seed,
        calls=calls,
        signals=signals,
        workers=workers,
        small_agents=agents,
        outage_seconds=outage_seconds,
        latency_ms=latency_ms,
        spool_dir=spool_dir,
    )
    try:
        code = demo.run(cfg, dsn=dsn, neo4j_uri=neo4j_uri, report_json=report_json, with_graph=not no_graph)
    except KeyboardInterrupt:  # before the run started (cluster start, migrations): nothing to settle
        click.echo("interrupted before the run started", err=True)
        code = demo.EXIT_SIGINT
    sys.exit(code)
