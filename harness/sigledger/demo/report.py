"""The demo's report: the checked invariants (check) and their printed form (print_report)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, TextIO

from sigledger.budget import BudgetClient
from sigledger.core.db import Database
from sigledger.demo.workload import Agent, Tally, usd
from sigledger.ledger.tracker import CostTracker


@dataclass
class Report:
    run: str
    seed: int
    interrupted: str | None = None
    elapsed_seconds: float = 0.0
    budgets: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[str, Any] = field(default_factory=dict)
    alerts: dict[str, int] = field(default_factory=dict)
    overruns: dict[str, Any] = field(default_factory=dict)
    reconcile: list[dict[str, Any]] = field(default_factory=list)
    ingest: dict[str, Any] = field(default_factory=dict)
    opportunities: dict[str, Any] = field(default_factory=dict)
    opportunities_refused: str | None = None
    tracker: dict[str, Any] = field(default_factory=dict)
    graph: dict[str, Any] = field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)  # per agent: id, acknowledged, records
    violations: list[str] = field(default_factory=list)
    exit_code: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2)


def check(
    rep: Report, db: Database, tracker: CostTracker, agents: list[Agent], tally: Tally, team_id: int | None
) -> None:
    """Fill the report from the database and record every violated invariant in rep.violations."""
    rep.tracker = {k: v for k, v in tracker.stats.items()}
    spooled = tracker.journal_files()
    if spooled:
        rep.violations.append(
            f"costs left in the spool (not yet in the ledger): {', '.join(map(str, spooled))}"
        )
    if not agents:
        return
    by_budget = {a.budget_id: a for a in agents if a.budget_id is not None}
    ids = [a.id for a in agents]
    # budget_status (SECURITY DEFINER) rather than the budget_overview view, which calls an internal
    # helper the app role may not execute
    client = BudgetClient(db)
    rows: list[dict[str, Any]] = []
    for a in agents:
        if a.budget_id is None:
            continue
        for r in client.status(a.id):
            if r["level"] == "agent" or (
                r["budget_id"] == team_id and not any(x["budget_id"] == team_id for x in rows)
            ):
                rows.append(r)
    for a in agents:
        t = tally.agents[a.name]
        rep.agents[a.name] = {
            "id": a.id,
            "kind": a.kind,
            "acknowledged_usd": str(t.acknowledged_usd),
            "records": t.records,
        }
    callers = [a.name for a in agents if a.kind != "embedder"]
    for r in rows:
        limit = usd(r["limit_usd"])
        cap = usd(r["cap_usd"])
        spent, reserved, excess = usd(r["spent_usd"]), usd(r["reserved_usd"]), usd(r["excess_usd"])
        if r["level"] == "team":
            names = callers
            label = "team"
        else:
            names = [by_budget[r["budget_id"]].name]
            label = by_budget[r["budget_id"]].kind
        acknowledged = usd(tally.total("acknowledged_usd", names))
        explained = usd(
            tally.total("overrun_usd", names)
            + tally.total("fail_open_usd", names)
            + tally.total("deferred_usd", names)
        )
        entry = {
            "budget_id": r["budget_id"],
            "name": "team" if r["level"] == "team" else by_budget[r["budget_id"]].name,
            "level": r["level"],
            "kind": label,
            "fail_policy": r["fail_policy"],
            "limit_usd": str(limit),
            "cap_usd": str(cap),
            "spent_usd": str(spent),
            "reserved_usd": str(reserved),
            "excess_usd": str(excess),
            "acknowledged_usd": str(acknowledged),
            "calls": tally.total("calls", names),
            "settled": tally.total("settled", names),
            "denied": tally.total("denied", names),
            "denied_by_team": tally.total("denied_by_team", names),
            "released": tally.total("released", names),
            "overruns": tally.total("overruns", names),
            "fail_open": tally.total("fail_open", names),
            "refused_unavailable": tally.total("refused_unavailable", names),
            "deferred": tally.total("deferred", names),
            "errors": tally.total("errors", names),
        }
        rep.budgets.append(entry)
        who = f"{r['level']} budget {r['name']}"
        if spent - excess > cap:
            rep.violations.append(f"{who}: admitted spend {spent - excess} above its cap {cap}")
        if spent > cap and excess > explained:
            rep.violations.append(
                f"{who}: excess {excess} not explained by overruns and costs recorded after the fact {explained}"
            )
        if spent != acknowledged:
            rep.violations.append(f"{who}: recorded spend {spent} != acknowledged costs {acknowledged}")
        if reserved != 0:
            rep.violations.append(f"{who}: {reserved} still held by open reservations")
    drift = [
        {k: str(v) for k, v in d.items()}
        for d in BudgetClient(db).reconcile(False)
        if d["budget_id"] in by_budget or d["budget_id"] == team_id
    ]
    rep.reconcile = drift
    if drift:
        rep.violations.append(f"reconcile_budgets: {len(drift)} budget(s) drift from the ledger")
    alerts = db.call(
        "SELECT threshold, count(*) AS n FROM sigledger.budget_alerts WHERE budget_id = ANY(%s::bigint[])"
        " GROUP BY threshold ORDER BY threshold",
        ([*by_budget, team_id],),
    )
    rep.alerts = {f"{Decimal(a['threshold']) * 100:.0f}%": int(a["n"]) for a in alerts}
    over = db.call_one(
        "SELECT count(*) FILTER (WHERE reservation_id <> ALL(%s::bigint[])) AS n, count(*) AS total,"
        " coalesce(sum(overrun_usd), 0) AS usd FROM sigledger.budget_overruns WHERE agent_id = ANY(%s::uuid[])",
        (tally.deferred_settles, ids),
    )
    assert over is not None
    rep.overruns = {"count": int(over["total"]), "usd": str(usd(over["usd"]))}
    # the guard reports the overruns of the settles it made; a deferred settle's overrun is the tracker's row's
    if int(over["n"]) != tally.total("overruns"):
        rep.violations.append(
            f"budget_overruns lists {over['n']} overruns of settles the guard made, the guard reported"
            f" {tally.total('overruns')}"
        )
    errors = tally.total("errors")
    if errors:
        rep.calls["errors"] = errors


def print_report(rep: Report, out: TextIO) -> None:
    w = out.write
    w("\n== sigledger demo report ==\n")
    state = f"interrupted by {rep.interrupted}" if rep.interrupted else "completed"
    w(f"run {rep.run} (seed {rep.seed}) {state} in {rep.elapsed_seconds}s\n\n")
    if rep.budgets:
        w(
            f"{'budget':<28}{'policy':>7}{'limit':>10}{'spent':>10}{'excess':>9}{'calls':>7}{'settled':>8}"
            f"{'denied':>7}{'(team)':>7}{'rel.':>6}{'overrun':>8}{'f-open':>7}{'refused':>8}\n"
        )
        for b in sorted(rep.budgets, key=lambda b: ({"team": 0, "hot": 1}.get(b["kind"], 2), b["name"])):
            w(
                f"{b['name'][:27]:<28}{b['fail_policy']:>7}{b['limit_usd'][:-4]:>10}{b['spent_usd'][:-4]:>10}"
                f"{b['excess_usd'][:-4]:>9}{b['calls']:>7}{b['settled']:>8}{b['denied']:>7}{b['denied_by_team']:>7}"
                f"{b['released']:>6}{b['overruns']:>8}{b['fail_open']:>7}{b['refused_unavailable']:>8}\n"
            )
        over = [b for b in rep.budgets if Decimal(b["spent_usd"]) > Decimal(b["cap_usd"])]
        w(
            "\nnever over: what the guard admitted is within the limit of every budget"
            + (" (checked)" if not rep.violations else "")
            + "\n"
        )
        if over:
            w(
                "  above the limit after the fact (overruns, fail-open calls during the outage; charged in full"
                " as excess, docs/budgets.md): "
                + ", ".join(f"{b['name']} +${Decimal(b['excess_usd']):.4f}" for b in over)
                + "\n"
            )
    g = rep.calls.get("guard", {})
    w(
        f"calls: {rep.calls.get('started', 0)}/{rep.calls.get('planned', 0)} started, reserved {g.get('reserved', 0)},"
        f" denied {g.get('denied', 0)}, released {g.get('released', 0)}, fail-open {g.get('fail_open', 0)},"
        f" fail-closed {g.get('fail_closed', 0)}, retries {g.get('retries', 0)}, errors {rep.calls.get('errors', 0)}\n"
    )
    w(f"overruns: {rep.overruns.get('count', 0)} (${rep.overruns.get('usd', '0')} above their estimates)\n")
    w(
        f"alerts fired: {sum(rep.alerts.values())} "
        + (f"({', '.join(f'{k}: {v}' for k, v in rep.alerts.items())})" if rep.alerts else "")
        + "\n"
    )
    w(
        f"reconcile_budgets: {'no drift' if not rep.reconcile else f'{len(rep.reconcile)} drifting budget(s)'}\n"
    )
    t = rep.tracker
    w(
        f"cost tracker: {t.get('accepted', 0)} accepted, {t.get('flushed', 0)} flushed, {t.get('spooled', 0)} spooled\n"
    )
    i = rep.ingest
    if i:
        w(
            f"signals: {i['lines']} read, {i['created']} created, {i['duplicates']} duplicates,"
            f" {i['rejected']} rejected, {i['entity_links']} entity links\n"
        )
        if i["rejected_examples"]:
            w(f"  rejected, e.g. {i['rejected_examples'][0]}\n")
    o = rep.opportunities
    if o:
        w(
            f"opportunities: {o.get('opportunities', 0)} created, {o.get('links', 0)} signal links,"
            f" {o.get('merges', 0)} merges ({o.get('merged_sources', 0)} sources, {o.get('moved_links', 0)} links moved,"
            f" {o.get('duplicate_links', 0)} duplicates dropped), {o.get('refused_merges', 0)} refused;"
            f" entity merges {o.get('entity_merges', 0)}\n"
        )
    g = rep.graph
    w(f"graph: {g.get('status', 'n/a')}\n")
    if g.get("nodes"):
        w(
            f"  {g.get('projected', 0)} outbox events projected, {g.get('dead', 0)} dead; Neo4j nodes: "
            + ", ".join(f"{k} {v}" for k, v in g["nodes"].items())
            + "\n"
        )
    if g.get("local") and g.get("uri"):
        w(f"  local Neo4j {g['uri']} left running (`make neo4j-down` stops it)\n")
    if not g.get("nodes") and g.get("outbox_pending"):
        w(f"  {g['outbox_pending']} outbox events wait for `sigledger graph sync` (nothing is lost)\n")
    if rep.violations:
        w("\nVIOLATIONS:\n" + "".join(f"  - {v}\n" for v in rep.violations))
    else:
        w("\nall checks passed\n")
    w(f"exit code {rep.exit_code}\n")
    out.flush()
