"""Update README.md's performance table from bench/results/*.json (run by `make bench` after the benchmarks).

Every figure is a ratio to a baseline measured in the same run, on the same machine; the machine is described
beside the table. Absolute rates on a shared 2-core machine move between runs; the ratios are what to read.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**not met**"


BUDGET_LABELS = {
    "a_reserve_settle": "reserve+settle",
    "a_check_and_record": "check_and_record",
    "a_reserve_settle_sliced": "reserve+settle, 8 slices",
    "a_check_and_record_sliced": "check_and_record, 8 slices",
    "a_reserve_settle_sliced32": "reserve+settle, 32 slices",
    "a_check_and_record_sliced32": "check_and_record, 32 slices",
    "b_bare_reserve_settle": "bare SQL",
    "b_bare_record": "bare SQL",
    "b_bare_record_sliced": "bare SQL on a random slice of 8",
    "b_bare_record_sliced32": "bare SQL on a random slice of 32",
    "b_raw_update": "raw single-row UPDATE",
    "c_seed": "seed NOWAIT",
    "f_floor_reserve_settle": "bare writes in PL/pgSQL functions",
    "f_floor_record": "bare writes in a PL/pgSQL function",
}


def budget_rows(data: dict[str, Any]) -> list[str]:
    """Every budget figure with a target, beside its baseline of the same run (bench/budget/designs.py)."""
    rows = []
    for x in data["ratios"]:
        if x["target"] is None:
            continue
        label = "1 hot agent" if x["workload"] == "hot" else f"{data['settings']['agents']} agents"
        # the same runs past each client's first second (bench/budget/README.md, Steady state); the verdict
        # stays that of the whole runs
        steady = "" if x.get("steady_ratio") is None else f" (steady state {x['steady_ratio']:.2f}x)"
        # the median of the rounds' paired ratios and their range (bench/budget/present.py, ratios)
        rng = (
            ""
            if not x.get("ratio_range")
            else f", rounds {x['ratio_range'][0]:.2f}-{x['ratio_range'][1]:.2f}x"
        )
        rows.append(
            f"| budget | {BUDGET_LABELS[x['design']]}, {label}, {x['clients']} clients: costs/s (load {x['loadavg'][0]}) "
            f"| {x['goodput']:.0f} | {BUDGET_LABELS[x['baseline']]} {x['baseline_goodput']:.0f} | {x['ratio']:.2f}x"
            f"{steady}{rng} | {x['target']}x: {_verdict(x['ratio'], x['target'])} |"
        )
    ours_over = max(o["overspend_pct"] for o in data["overspend"] if not o["design"].startswith("c_"))
    seed_over = max(o["overspend_pct"] for o in data["overspend"] if o["design"].startswith("c_"))
    rows.append(
        f"| budget | worst overspend of a hard budget, 32/64 clients | {ours_over}% | seed {seed_over}% | - "
        f"| 0%: {_verdict(ours_over, 0, higher_is_better=False)} |"
    )
    led = data["ledger"]
    ratio = led["ratios"]["record_costs_vs_bare"]
    rows.append(
        f"| ledger | record_costs rows/s, batches of {led['batch_size']} over {led['agents']} agents (load "
        f"{led['loadavg']}) | {led['rows_per_s']['record_costs']} | bare statement {led['rows_per_s']['bare']}, "
        f"COPY {led['rows_per_s']['copy']} | {ratio:.2f}x | 0.7x: {_verdict(ratio, 0.7)} |"
    )
    return rows


def ingest_rows(data: dict[str, Any]) -> list[str]:
    ing, res, merge = data["ingest"], data["resolve"], data["merge"]
    pgb = res["pgbench"]
    return [
        f"| ingest | signals/s, ingest_signals batches of {ing['batch_size']} | {ing['batch']['signals_per_s']:.0f} "
        f"| single ingest_signal {ing['single']['signals_per_s']:.0f} | {ing['batch_over_single']:.1f}x | - |",
        f"| ingest | resolve_entity lookups/s at {res['aliases']:,} aliases (pgbench) "
        f"| {pgb['resolve_entity']['lookups_per_s']:.0f} (p95 {pgb['resolve_entity']['p95_ms']} ms) "
        f"| bare indexed SELECT {pgb['bare_select']['lookups_per_s']:.0f} (p95 {pgb['bare_select']['p95_ms']} ms) "
        f"| {res['function_over_bare']:.2f}x | 0.9x: {_verdict(res['function_over_bare'], 0.9)} |",
        f"| ingest | entity_alias_lookup view lookups/s (pgbench) | {pgb['lookup_view']['lookups_per_s']:.0f} "
        f"| bare indexed SELECT {pgb['bare_select']['lookups_per_s']:.0f} | {res['view_over_bare']:.2f}x "
        f"| 0.9x: {_verdict(res['view_over_bare'], 0.9)} |",
        f"| ingest | merges/s, opportunities with {merge['links_per_opportunity']} signals | {merge['merges_per_s']:.0f} "
        "| - | - | - |",
    ]


def graph_rows(data: dict[str, Any]) -> list[str]:
    drain, targets = data["drain"], data["targets"]
    if "fresh" not in drain:  # results of the first benchmark (one refresh backlog, one worker)
        return [
            f"| graph | events/s drained, UNWIND batches of {drain['batched']['batch_size']} "
            f"| {drain['batched']['events_per_s']:.0f} | one event per transaction "
            f"{drain['per_event']['events_per_s']:.0f} | {drain['speedup']:.1f}x | - |"
        ]
    rows = []
    for kind, label in (("fresh", "fresh backlog (nodes created)"), ("refresh", "refresh backlog")):
        per = drain[kind]["per_event"]
        for workers in ("2", "1"):
            run = drain[kind][workers]
            ratio = run["events_per_s"] / per["events_per_s"]
            target = "-"
            if kind == "fresh" and workers == "2":
                ok = min(
                    run["events_per_s"] / targets["fresh_2_workers_events_per_s"], ratio / targets["speedup"]
                )
                target = f"5,000/s and 20x: {_verdict(ok, 1)}"
            rows.append(
                f"| graph | {label}: events/s, {workers} worker{'s' if workers != '1' else ''}, batches of "
                f"{run['batch_size']} (load {run['loadavg_1m']:.1f}) | {run['events_per_s']:.0f} "
                f"| one event per transaction {per['events_per_s']:.0f} (load {per['loadavg_1m']:.1f}) "
                f"| {ratio:.1f}x | {target} |"
            )
    lag = data.get("lag")
    if lag:
        rows.append(
            f"| graph | sync lag p95 at {lag['achieved_ingest_rate']:.0f} events/s of ingest, 1 worker "
            f"(load {lag.get('loadavg_1m', 0):.1f}) "
            f"| {lag['p95_s'] * 1000:.0f} ms | - | - "
            f"| < 1 s: {_verdict(lag['p95_s'], targets['lag_p95_s'], higher_is_better=False)} |"
        )
    return rows


def report_rows(data: dict[str, Any]) -> list[str]:
    s, hp = data["settings"], data["hot_path"]
    labels = {
        "a_agent_month_by_day_model": "one agent's month by day and model",
        "b_all_agents_month": "all agents' month",
        "c_near_limit": "budgets near their limit",
    }
    rows = [
        f"| report | {labels[name]}, {s['rows']:,} ledger rows, p95 (load {data['load_before'][0]}) "
        f"| {q['p95_ms']} ms | - | - | {q['target_p95_ms']:.0f} ms: "
        f"{_verdict(q['p95_ms'], q['target_p95_ms'], higher_is_better=False)} |"
        for name, q in data["queries"].items()
    ]
    rows.append(
        f"| report | reserve+settle/s with the read side's overrun index | {hp['reserve_settle_per_s']['with_index']:.0f} "
        f"| without it {hp['reserve_settle_per_s']['without_index']:.0f} | {hp['ratio_with_vs_without']:.2f}x "
        f"| no slower: {_verdict(hp['ratio_with_vs_without'], 0.95)} |"
    )
    return rows


def migrate_rows(data: dict[str, Any]) -> list[str]:
    ours = data["this_release"]
    first = data.get("first_release")
    rows_n = f"{data['settings']['ledger_rows']:,}"
    during, load = ours["load_during_upgrade"], f"load average {ours['loadavg_1min'][0]}"
    errors = sum(during["errors"].values())

    def base(key: str, fmt: str) -> str:
        if not first:
            return "-"
        value = first["load_during_upgrade"][key]
        return f"first release {fmt.format(value)}"

    first_errors = (
        ", ".join(f"{n} x {code}" for code, n in sorted(first["load_during_upgrade"]["errors"].items()))
        or "0"
        if first
        else "-"
    )
    ratio = (
        f"{first['load_during_upgrade']['worst_lock_wait_s'] / max(during['worst_lock_wait_s'], 0.001):.0f}x less"
        if first
        else "-"
    )
    target = data["targets"]["worst_lock_wait_s"]
    return [
        f"| migrate | V3_010 -> head on {rows_n} ledger rows, 4 writer threads: worst application lock wait ({load}) "
        f"| {during['worst_lock_wait_s']:.2f} s | {base('worst_lock_wait_s', '{:.2f} s')} | {ratio} "
        f"| <= {target:g} s: {_verdict(during['worst_lock_wait_s'], target, higher_is_better=False)} |",
        f"| migrate | application errors during that upgrade ({during['transactions']:,} transactions) | {errors} "
        f"| first release {first_errors} | - | 0: {_verdict(errors, 0, higher_is_better=False)} |",
        f"| migrate | upgrade duration (runner retries) | {ours['upgrade_s']:.0f} s ({ours['runner_retries']}) "
        f"| {'first release ' + format(first['upgrade_s'], '.0f') + ' s' if first else '-'} | - | - |",
    ]


def render() -> str:
    sections: list[str] = []
    machine = f"{platform.system()} {platform.machine()}"
    for name, rows_of in (
        ("budget", budget_rows),
        ("ingest", ingest_rows),
        ("graph", graph_rows),
        ("report", report_rows),
        ("migrate", migrate_rows),
    ):
        data = _load(name)
        if data is None:
            sections.append(f"| {name} | no results yet (`make bench-{name}`) | - | - | - | - |")
            continue
        sections += rows_of(data)
        cpus = data.get("machine", {}).get("cpus")
        if cpus:
            machine = (
                f"{platform.system()} {platform.machine()}, {cpus} CPUs shared with other work, PostgreSQL 15"
            )
    charts = " ".join(f"[{p.stem}](bench/results/{p.name})" for p in sorted(RESULTS.glob("*.png")))
    return "\n".join(
        [
            START,
            f"Machine: {machine}. Each ratio compares two figures measured in the same run. Charts: {charts}.",
            "",
            "| area | measure | sigledger | baseline (same run) | ratio | target |",
            "|---|---|---|---|---|---|",
            *sections,
            END,
        ]
    )


def main() -> int:
    text = README.read_text()
    block = render()
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _m: block, text, flags=re.DOTALL)
    else:
        text = text.rstrip() + "\n\n## Performance\n\n" + block + "\n"
    README.write_text(text)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
