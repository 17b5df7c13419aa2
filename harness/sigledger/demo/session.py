"""One demo run (``Demo``): budgets, calls through BudgetGuard with an outage, ingestion, opportunities,
the graph follower, and the report; run.py is the entry point."""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import signal
import threading
import time
import uuid
from decimal import Decimal
from types import FrameType
from typing import Any, TextIO

from sigledger.budget import BudgetClient, BudgetGuard
from sigledger.budget.breaker import Breaker
from sigledger.core.db import Database
from sigledger.core.errors import ReservationClosed, SigledgerError
from sigledger.core.paths import state_dir
from sigledger.demo import opportunities, report
from sigledger.demo.report import Report
from sigledger.demo.workload import (
    Agent,
    Company,
    DemoConfig,
    OutageClient,
    Tally,
    create_budgets,
    feed_lines,
    make_call,
    make_companies,
    plan_budgets,
    plan_calls,
    usd,
)
from sigledger.ingest.client import ingest_lines
from sigledger.ledger.client import CostRecord
from sigledger.ledger.tracker import CostTracker

log = logging.getLogger("sigledger.demo")


class Demo:
    """One run: the shared state its call threads, its ingest thread and its progress line read and write.

    Longer than the package's usual class: the run's phases share that state (the stop flag, the outage,
    the tally, the guard) and read top to bottom as the demo's script; the workload, the opportunity phase
    and the report live in their own modules."""

    def __init__(
        self,
        dsn: str,
        cfg: DemoConfig,
        *,
        out: TextIO,
        err: TextIO,
        neo4j_uri: str | None = None,
        owner_dsn: str | None = None,
        graph: str = "off",
    ) -> None:
        self.dsn = dsn
        self.cfg = cfg
        self.out = out
        self.err = err
        self.neo4j_uri = neo4j_uri
        self.owner_dsn = owner_dsn or dsn  # the graph sync calls internal functions: not the app role
        self.graph_mode = graph  # on | off | a reason why it is skipped
        self.graph: Any = None  # sigledger.demo.graph.GraphProjection while it runs
        self.run_id = uuid.uuid4().hex[:6]
        self.rng = random.Random(cfg.seed)
        self.stop = threading.Event()
        self.outage = threading.Event()
        self.stop_reason: str | None = None
        self.signals_seen = 0
        self.signals_told = 0
        self.tally = Tally()
        self.signals_read = 0
        self.caller_names: list[str] = []
        self.guard: BudgetGuard | None = None
        self.alerts_seen = 0
        self.last_alert_id = 0
        self.budget_ids: set[int] = set()
        self.phase = "setup"
        self.started = time.monotonic()
        self.report = Report(run=self.run_id, seed=cfg.seed)
        self.agents: list[Agent] = []
        self.companies: list[Company] = []
        self.team_id: int | None = None

    # signals ----------------------------------------------------------------------------------------------
    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        # only flags here: writing to a stream the main thread may be writing to raises a reentrant-call error
        if self.stop_reason is None:
            self.stop_reason = signal.Signals(signum).name
        self.signals_seen += 1
        self.stop.set()

    def _tell_stop(self) -> None:
        if self.signals_seen > self.signals_told:
            first = self.signals_told == 0
            self.signals_told = self.signals_seen
            self.err.write(
                f"\n{self.stop_reason}: stopping - no new calls or batches; calls in flight settle or release\n"
                if first
                else f"\n{self.stop_reason}: already stopping, please wait\n"
            )
            self.err.flush()

    # progress ---------------------------------------------------------------------------------------------
    def status_line(self, calls_started: int) -> str:
        t = self.tally
        spend = t.total("acknowledged_usd", self.caller_names)
        breaker = self.guard.breaker.state if self.guard is not None else "closed"
        return (
            f"[{time.monotonic() - self.started:5.1f}s] calls {calls_started}/{self.cfg.calls}  ${spend:.2f}"
            f"  signals {self.signals_read}/{self.cfg.signals}  alerts {self.alerts_seen}"
            f" | settled {t.total('settled')} denied {t.total('denied')} released {t.total('released')}"
            f" fail-open {t.total('fail_open')} refused {t.total('refused_unavailable')}"
            + (f" | breaker {breaker}" if breaker != "closed" else "")
            + (" | OUTAGE" if self.outage.is_set() else "")
            + (f" | {self.graph.status()}" if self.graph is not None else "")
            + ("" if self.phase == "calls+ingest" else f" | {self.phase}")
        )

    def _status(self, calls_started: int, is_tty: bool, final: bool = False) -> None:
        line = self.status_line(calls_started)
        if is_tty:  # one line, rewritten in place
            width = shutil.get_terminal_size().columns
            self.err.write("\r" + line[: width - 1] + "\x1b[K" + ("\n" if final else ""))
        else:
            self.err.write(line + "\n")
        self.err.flush()

    def _poll_alerts(self, client: BudgetClient) -> None:
        """Alerts fired since the last look (budget_alerts_after: what a LISTEN watcher uses to catch up)."""
        try:
            rows = client.alerts_after(self.last_alert_id)
        except SigledgerError:
            return  # progress only: the report counts them again
        for r in rows:
            self.last_alert_id = max(self.last_alert_id, int(r["id"]))
            if r["budget_id"] in self.budget_ids:
                self.alerts_seen += 1

    # main -------------------------------------------------------------------------------------------------
    def execute(self) -> Report:
        cfg = self.cfg
        spool_dir = cfg.spool_dir or state_dir() / "demo"
        db = Database(self.dsn, min_size=2, max_size=cfg.workers + 4, application_name="sigledger-demo")
        db.open()
        tracker = CostTracker(db, spool_dir / f"costs-{self.run_id}", batch_size=200, flush_interval=0.5)
        tracker.start()
        if self.graph_mode == "on":
            from sigledger.demo.graph import GraphProjection

            self.graph = GraphProjection(self.owner_dsn, self.neo4j_uri, self.err, self.stop)
            self.graph.start()  # Neo4j starts while the Postgres side works; ingestion never waits for it
        try:
            self._execute(db, tracker)
        finally:
            if self.graph is not None and not self.report.graph:
                self.report.graph = self.graph.finish(interrupted=True)
            tracker.close()  # flush the rest (what cannot be written stays in the journal) before any check
            with contextlib.suppress(OSError):
                tracker.spool_path.rmdir()  # this run's spool folder, when nothing is left in it
            try:
                self._tell_stop()
                self.report.interrupted = self.stop_reason
                self.report.elapsed_seconds = round(time.monotonic() - self.started, 1)
                report.check(self.report, db, tracker, self.agents, self.tally, self.team_id)
            finally:
                db.close()
        return self.report

    def _execute(self, db: Database, tracker: CostTracker) -> None:
        cfg = self.cfg
        client = BudgetClient(db)
        agents, team_limit = plan_budgets(cfg, self.run_id, self.rng)
        self.agents = agents
        self.caller_names = [a.name for a in agents if a.kind != "embedder"]
        self.team_id = create_budgets(db, client, self.run_id, agents, team_limit)
        self.team_limit = team_limit
        self.budget_ids = {a.budget_id for a in agents if a.budget_id is not None} | {self.team_id}
        self.err.write(
            f"run {self.run_id} (seed {cfg.seed}): {len(agents) - 1} agents under a ${team_limit} team budget, "
            f"hot agent ${agents[0].limit_usd}, {cfg.calls} calls on {cfg.workers} workers, {cfg.signals} signals\n"
        )
        callers = [a for a in agents if a.kind != "embedder"]
        plans = plan_calls(cfg, self.rng, len(callers) - 1)
        companies = make_companies(max(12, cfg.signals // 80), self.run_id, self.rng)
        for c in companies:
            row = db.call_one(
                "SELECT sigledger.create_entity(p_name => %s::text, p_aliases => %s::text[],"
                " p_entity_type => 'company') AS id",
                (c.name, c.aliases),
            )
            assert row is not None
            c.id = str(row["id"])
        self.companies = companies

        guard = BudgetGuard(
            db,
            breaker=Breaker(fail_max=5, reset_timeout=1.0, success_threshold=2, name="demo-budget-db"),
            tracker=tracker,
        )
        guard.client = OutageClient(db, self.outage)
        self.guard = guard
        for a in callers:
            guard.remember_policy(a.id, a.fail_policy)  # what applies while the database cannot say

        # workers take the next planned call until the plan is done or a stop is requested
        lock = threading.Lock()
        queue = iter(plans)
        started = [0]

        def worker() -> None:
            while not self.stop.is_set():
                with lock:
                    plan = next(queue, None)
                    if plan is None:
                        return
                    started[0] += 1
                make_call(guard, callers[plan.agent], plan, self.run_id, self.tally)

        ingest_summary: list[Any] = []
        ingest_error: list[BaseException] = []
        feed_rng = random.Random(cfg.seed + 1)
        embedder = agents[-1]

        def ingest() -> None:
            try:

                def progress(n: int) -> None:
                    self.signals_read += n
                    # embeddings of the batch: an unbudgeted cost, recorded after the fact via the tracker
                    rec = CostRecord(
                        agent_id=embedder.id,
                        model="text-embedding-3-small",
                        provider="openai",
                        input_tokens=n * 120,
                        cost_usd=usd(Decimal(n * 120) * Decimal("0.00000002")),
                        metadata={"demo_run": self.run_id, "signals": n},
                        idempotency_key=f"demo:{self.run_id}:embed:{self.signals_read}",
                    )
                    tracker.record(rec)
                    self.tally.bump(embedder.name, records=1, acknowledged_usd=rec.cost_usd)

                def pace(fraction: float) -> bool:
                    # the feed streams in while the agents work: keep up with the calls started
                    while started[0] < fraction * cfg.calls and not self.stop.is_set():
                        if not any(th.is_alive() for th in threads[:-1]):
                            break
                        time.sleep(0.05)
                    return not self.stop.is_set()

                lines = feed_lines(cfg, self.run_id, companies, feed_rng, self.stop, pace)
                ingest_summary.append(
                    ingest_lines(db, lines, batch_size=cfg.batch_size, policy="create", progress=progress)
                )
            except BaseException as exc:  # reported, never a thread traceback
                log.error("ingestion failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
                ingest_error.append(exc)

        self.phase = "calls+ingest"
        threads = [
            threading.Thread(target=worker, name=f"demo-call-{i}", daemon=True) for i in range(cfg.workers)
        ]
        threads.append(threading.Thread(target=ingest, name="demo-ingest", daemon=True))
        for th in threads:
            th.start()
        outage_at = int(cfg.calls * 0.35) if cfg.outage_seconds > 0 else None
        outage_until: float | None = None
        is_tty = self.err.isatty()
        last = 0.0
        while any(th.is_alive() for th in threads):
            for th in threads:
                th.join(0.1)
            self._tell_stop()
            now = time.monotonic()
            if (
                outage_at is not None
                and outage_until is None
                and started[0] >= outage_at
                and not self.stop.is_set()
            ):
                self.outage.set()
                outage_until = now + cfg.outage_seconds
                self.err.write(
                    ("\n" if is_tty else "") + f"simulated budget-database outage for {cfg.outage_seconds}s\n"
                )
            if (
                outage_until is not None
                and self.outage.is_set()
                and (now >= outage_until or self.stop.is_set())
            ):
                self.outage.clear()
            if now - last >= cfg.status_interval:
                last = now
                self._poll_alerts(client)
                self._status(started[0], is_tty)
        self.outage.clear()
        self._poll_alerts(client)
        self._status(started[0], is_tty, final=True)
        # holds whose settle or release met the outage (the breaker failed them fast): their costs are in the
        # tracker already; release the holds now instead of waiting for their TTL and the expiry sweep
        held = settled_by_tracker = 0
        for rid in self.tally.leftover_holds:
            try:
                client.release(rid)
                held += 1
            except SigledgerError as exc:
                self.report.violations.append(f"reservation {rid} left open: {exc}")
        # a deferred settle's hold is settled by its ledger row when the tracker writes it (maybe already)
        for rid in self.tally.deferred_settles:
            try:
                client.release(rid)
                held += 1
            except ReservationClosed:
                settled_by_tracker += 1  # SLB03: already settled, by the tracker's row
            except SigledgerError as exc:
                self.report.violations.append(f"reservation {rid} left open: {exc}")
        self.report.calls = {
            "planned": cfg.calls,
            "started": started[0],
            "guard": dict(guard.stats),
            "breaker_state": guard.breaker.state,
            "holds_released_after_outage": held,
            "holds_settled_by_the_tracker": settled_by_tracker,
        }
        if ingest_summary:
            s = ingest_summary[0]
            self.report.ingest = {
                "lines": s.lines,
                "created": s.created,
                "duplicates": s.duplicates,
                "rejected": len(s.rejected),
                "rejected_examples": [f"line {r.line}: {r.reason}" for r in s.rejected[:3]],
                "entity_links": s.linked,
                "queued_mentions": s.queued,
            }
        if ingest_error:
            self.report.violations.append(f"ingestion failed: {ingest_error[0]}")
        if not self.stop.is_set():
            self.phase = "opportunities"
            self.err.write("opportunities: creating, linking and merging\n")
            self.report.opportunities = opportunities.create_and_merge(
                db, self.companies, seed=self.cfg.seed, run_id=self.run_id, stop=self.stop, report=self.report
            )
        self.phase = "graph"
        self.report.graph = self._sync_graph()

    def _sync_graph(self) -> dict[str, Any]:
        """The graph section of the report: the follower stopped, the outbox drained, Neo4j verified."""
        if self.graph is None:
            return {"status": f"skipped ({self.graph_mode})"}
        result: dict[str, Any] = self.graph.finish(interrupted=self.stop.is_set())
        if result.get("verify") and not result["verify"]["clean"]:
            self.report.violations.append(f"graph verify: Neo4j drifts from Postgres {result['status']}")
        return result
