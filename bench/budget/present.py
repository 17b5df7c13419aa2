"""The budget benchmark's presentation: every figure beside its baseline of the same run, as a ratio
(bench/results/budget.md), and the chart. Used by run.py."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from designs import BASELINES, DESIGNS


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, workload in zip(axes, ("hot", "spread"), strict=True):
        for design, (label, _, _) in DESIGNS.items():
            pts = sorted(
                (r["clients"], r["goodput"])
                for r in results
                if r["workload"] == workload and r["design"] == design
            )
            if pts:
                ax.plot([p[0] for p in pts], [max(p[1], 0.1) for p in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("clients")
        ax.set_title("one hot agent" if workload == "hot" else "1000 agents")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("recorded costs per second (goodput)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def paired(r: dict[str, Any], b: dict[str, Any], key: str) -> list[float]:
    """The ratio of a design to its baseline in each round of the run (both measured in that
    round), for the rounds where both have the figure."""
    return [
        x[key] / y[key]
        for x, y in zip(r.get("rounds", []), b.get("rounds", []), strict=False)
        if x.get(key) is not None and y.get(key)
    ]


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every figure against its baselines of the same run (same workload, same client count). The ratio is
    the median of the rounds' paired ratios (a design against the baseline run next to it): on a shared
    machine the best run of each design can come from different moments, and its ratio swung by 0.3 from run
    to run; the range of the paired ratios is reported beside it. A run without rounds (older results) keeps
    the best-against-best ratio."""
    by = {(r["workload"], r["clients"], r["design"]): r for r in results}
    out = []
    for (workload, clients, design), r in sorted(by.items()):
        for base, target in BASELINES.get(design, []):
            b = by.get((workload, clients, base))
            if b is None:
                continue
            best_ratio = round(r["goodput"] / max(b["goodput"], 0.1), 2)
            pairs = paired(r, b, "goodput")
            ratio = round(statistics.median(pairs), 2) if pairs else best_ratio
            steady, b_steady = r.get("goodput_steady"), b.get("goodput_steady")
            steady_pairs = paired(r, b, "steady")
            steady_ratio = (
                round(statistics.median(steady_pairs), 2)
                if steady_pairs
                else None
                if not steady or not b_steady
                else round(steady / b_steady, 2)
            )
            out.append(
                {
                    "workload": workload,
                    "clients": clients,
                    "design": design,
                    "baseline": base,
                    "goodput": r["goodput"],
                    "baseline_goodput": b["goodput"],
                    "ratio": ratio,
                    "ratio_range": [round(min(pairs), 2), round(max(pairs), 2)] if pairs else None,
                    "best_ratio": best_ratio,
                    "rounds": len(pairs),
                    "target": target,
                    "met": None if target is None else ratio >= target,
                    "steady_goodput": steady,
                    "baseline_steady_goodput": b_steady,
                    "steady_ratio": steady_ratio,
                    "loadavg": [r["loadavg"], b["loadavg"]],
                }
            )
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x}x"


def markdown(report: dict[str, Any]) -> str:
    """bench/results/budget.md: every figure beside its baseline of the same run, as a ratio."""
    lines = [
        f"Budget benchmark, {report['generated_at']}, {report['machine']['cpus']} CPUs (shared), "
        f"{report['settings']['duration_s']} s per run, {report['settings'].get('rounds', report['settings'].get('repeat_best_of'))} rounds, "
        f"load average {report['loadavg']['start']} at the start, {report['loadavg']['end']} at the end.",
        "",
        "",
        "Ratios of the whole 3-s runs (each run opens new connections): the median of the rounds' paired ratios",
        "(each design against its baseline run in the same round) with their range, and the",
        "best-of-the-rounds costs/s beside them; in the last three columns, the same once each client is past its",
        "first second (steady state: a new backend's first calls compile and plan; bench/budget/README.md,",
        "Steady state).",
        "",
        "| workload | clients | design | best costs/s | baseline (same run) | best costs/s | ratio (median) "
        "| range | target | load avg | steady costs/s | baseline steady | steady ratio (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in report["ratios"]:
        name = "1 hot agent" if x["workload"] == "hot" else f"{report['settings']['agents']} agents"
        target = "-" if x["target"] is None else f"{x['target']}x: {'met' if x['met'] else '**not met**'}"
        rng = "-" if not x.get("ratio_range") else f"{x['ratio_range'][0]}-{x['ratio_range'][1]}x"
        lines.append(
            f"| {name} | {x['clients']} | {DESIGNS[x['design']][0]} | {x['goodput']:.0f} "
            f"| {DESIGNS[x['baseline']][0]} | {x['baseline_goodput']:.0f} | {x['ratio']}x | {rng} | {target} "
            f"| {x['loadavg'][0]} / {x['loadavg'][1]} | {_num(x.get('steady_goodput'))} "
            f"| {_num(x.get('baseline_steady_goodput'))} | {_ratio(x.get('steady_ratio'))} |"
        )
    lines += [
        "",
        "Latency of one script run and success rate:",
        "",
        "| workload | clients | design | costs/s | p50 ms | p99 ms | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        name = "1 hot agent" if r["workload"] == "hot" else f"{r['agents']} agents"
        lines.append(
            f"| {name} | {r['clients']} | {r['label']} | {r['goodput']:.0f} | {r['p50_ms']} | {r['p99_ms']} "
            f"| {r['success_pct']}% |"
        )
    lines += [
        "",
        "Overspend of a hard $1.00 budget (calls of $0.01 until it runs out; 5 ms LLM call between check and record):",
        "",
        "| design | clients | attempts | spent | overspend |",
        "|---|---|---|---|---|",
    ]
    for o in report["overspend"]:
        lines.append(
            f"| {DESIGNS[o['design']][0]} | {o['clients']} | {o['attempts']} | ${o['spent_usd']:.2f} | {o['overspend_pct']}% |"
        )
    led = report["ledger"]
    lines += [
        "",
        f"Ledger batches ({led['batch_size']} rows over {led['agents']} agents, one client, best of "
        f"{led['repeat_best_of']}; load average {led['loadavg']}):",
        "",
        "| path | rows/s | vs bare statement | vs COPY |",
        "|---|---|---|---|",
        f"| record_costs | {led['rows_per_s']['record_costs']} | {led['ratios']['record_costs_vs_bare']}x (target 0.7x) "
        f"| {led['ratios']['record_costs_vs_copy']}x |",
        f"| bare statement, same writes | {led['rows_per_s']['bare']} | 1x | {led['ratios']['bare_vs_copy']}x |",
        f"| COPY into a plain table | {led['rows_per_s']['copy']} | - | 1x |",
    ]
    return "\n".join(lines) + "\n"
