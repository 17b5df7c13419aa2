"""The main job (`sigledger demo`): a realistic run of the whole pipeline against one database.

What it does, in order (docs: README "make demo"):

1. Database: a throwaway local cluster (``harness.localdb``) whose ``sigledger_demo`` database is dropped and
   recreated every run, migrated, and used as ``sigledger_admin`` (the application's API plus budget
   administration, no table privilege; the graph worker runs as ``sigledger_graph``); or an
   existing database (``--dsn``), where every name carries a per-run token so that runs never collide.
2. Budgets: one hot agent, many small ones, all under a team budget smaller than the sum of theirs; some
   agents fail open, the others fail closed; alert thresholds at 50/80/100 % of each limit.
3. Concurrently: worker threads make simulated LLM calls through one ``BudgetGuard`` (reserve -> call with
   random latency and cost -> settle; sometimes above the estimate, sometimes an exception that releases the
   hold), a short simulated outage of the budget database lets fail-open agents through (their costs go to
   the ``CostTracker``) and refuses fail-closed ones; meanwhile a generated feed of signals with entity
   mentions and aliases is ingested in batches (``harness.ingest``), with embedding costs recorded through
   the tracker.
4. Opportunities created per entity, signals linked, duplicates merged (``merge_opportunities``), entity
   variants merged into their canonical entity. All along, a graph sync worker follows the outbox into Neo4j
   (``harness.demo_graph``: the local server, or ``--neo4j-uri``); at the end it drains and verifies.
5. Report and checks: spend of every budget against its cap, the demo's own tally of acknowledged costs
   equal to the database's recorded spend, reconcile_budgets without drift, no hold left open, nothing left
   in the spool, no graph drift. Any violation exits 1.

SIGINT/SIGTERM: no new call starts and no new batch is read; calls in flight settle (or release), the
tracker flushes, the report is printed, and the exit code is 130 (SIGINT) or 143 (SIGTERM) when every check
holds, 1 when one does not.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from harness.breaker import Breaker
from harness.budget import BudgetClient, BudgetGuard, Reservation
from harness.cost_tracker import CostTracker
from harness.db import Database
from harness.errors import BudgetExceeded, BudgetUnavailable, MergeConflict, SigledgerError, Unavailable
from harness.ingest import ingest_lines, merge_opportunities
from harness.ledger import CostRecord
from harness.localdb import LocalCluster
from harness.paths import state_dir

log = logging.getLogger("sigledger.demo")

DEMO_DATABASE = "sigledger_demo"
USD = Decimal("0.000001")  # the ledger's scale
EXIT_OK, EXIT_VIOLATION, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143

MODELS = (("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku"), ("openai", "gpt-4o"))
SOURCES = ("news", "filings", "social")
SYLLABLES = ("ac", "me", "zo", "ra", "ni", "ve", "lo", "qui", "ta", "bel", "dor", "xa", "mon", "tri", "sol")
SECTORS = ("Robotics", "Energy", "Health", "Logistics", "Foods", "Analytics", "Mining", "Labs")


def usd(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(USD, rounding=ROUND_HALF_UP)


@dataclass
class DemoConfig:
    seed: int = 42
    calls: int = 600
    signals: int = 3000
    workers: int = 8
    small_agents: int = 20
    outage_seconds: float = 1.5
    latency_ms: tuple[int, int] = (100, 900)
    batch_size: int = 200
    status_interval: float = 1.0
    spool_dir: Path | None = None


# ---------------------------------------------------------------------------------------------------------
# Budgets and agents


@dataclass
class Agent:
    name: str
    kind: str  # hot | small | embedder
    limit_usd: Decimal | None
    fail_policy: str
    id: str = ""
    budget_id: int | None = None


@dataclass
class AgentTally:
    calls: int = 0
    settled: int = 0
    denied: int = 0
    denied_by_team: int = 0
    refused_unavailable: int = 0
    released: int = 0
    overruns: int = 0
    overrun_usd: Decimal = Decimal(0)
    fail_open: int = 0
    fail_open_usd: Decimal = Decimal(0)
    deferred: int = 0  # settle or release could not reach the database: the hold is released afterwards
    deferred_usd: Decimal = Decimal(0)
    errors: int = 0
    records: int = 0  # ledger rows the demo was told about (settled + recorded through the tracker)
    acknowledged_usd: Decimal = Decimal(0)


class Tally:
    """What the demo was told happened, per agent; the report compares it with the database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.agents: dict[str, AgentTally] = defaultdict(AgentTally)
        self.leftover_holds: list[int] = []  # reservations whose settle/release was deferred by an outage

    def leftover(self, reservation_id: int | None) -> None:
        if reservation_id is not None:
            with self._lock:
                self.leftover_holds.append(reservation_id)

    def bump(self, agent: str, **changes: Any) -> None:
        with self._lock:
            t = self.agents[agent]
            for key, value in changes.items():
                setattr(t, key, getattr(t, key) + value)

    def total(self, attr: str, agents: list[str] | None = None) -> Any:
        with self._lock:
            return sum(
                (getattr(t, attr) for name, t in self.agents.items() if agents is None or name in agents),
                Decimal(0) if attr.endswith("_usd") else 0,
            )


def plan_budgets(cfg: DemoConfig, run: str, rng: random.Random) -> tuple[list[Agent], Decimal]:
    """Limits sized from the expected demand so that the hot agent, some small agents and the team run out."""
    mean_cost = Decimal("0.021")  # mean estimate 0.03 x mean actual/estimate ~0.7
    hot_demand = mean_cost * int(cfg.calls * 0.4)
    small_demand = mean_cost * int(cfg.calls * 0.6) / max(cfg.small_agents, 1)
    agents = [
        Agent(f"demo-{run}-hot", "hot", usd(max(hot_demand * Decimal("0.6"), Decimal("0.2"))), "closed")
    ]
    for i in range(cfg.small_agents):
        factor = Decimal(rng.choice(("0.5", "0.8", "1.2", "2.0")))
        agents.append(
            Agent(
                f"demo-{run}-agent-{i + 1:02d}",
                "small",
                usd(max(small_demand * factor, Decimal("0.05"))),
                "open" if i % 3 == 0 else "closed",
            )
        )
    agents_total = sum((a.limit_usd or Decimal(0) for a in agents), Decimal(0))
    team_limit = usd(agents_total * Decimal("0.8"))
    agents.append(Agent(f"demo-{run}-embedder", "embedder", None, "open"))
    return agents, team_limit


def create_budgets(
    db: Database, client: BudgetClient, run: str, agents: list[Agent], team_limit: Decimal
) -> int:
    row = db.call_one(
        "SELECT sigledger.create_group_budget(p_level => 'team', p_name => %s::text, p_limit_usd => %s::numeric,"
        " p_fail_policy => 'closed', p_alert_thresholds => '{0.5,0.8,1.0}'::numeric[]) AS id",
        (f"demo-{run}-team", team_limit),
    )
    assert row is not None
    team_id = int(row["id"])
    for agent in agents:
        if agent.limit_usd is None:
            agent.id = client.create_agent(agent.name)  # no budget: embeddings are only recorded
            continue
        agent.id = client.create_agent(
            agent.name,
            agent.limit_usd,
            fail_policy=agent.fail_policy,
            alert_thresholds=[Decimal("0.5"), Decimal("0.8"), Decimal("1.0")],
            parent_budget_id=team_id,
        )
        status = [r for r in client.status(agent.id) if r["level"] == "agent"]
        agent.budget_id = int(status[0]["budget_id"])
    return team_id


# ---------------------------------------------------------------------------------------------------------
# Simulated LLM calls


class SimulatedLLMError(RuntimeError):
    """The provider failed before answering: nothing was spent, the hold is released."""


class SimulatedCallerError(RuntimeError):
    """The caller's code failed after the answer: the money was spent, the guard still settles."""


@dataclass(frozen=True)
class CallPlan:
    n: int
    agent: int  # index into the agents list
    estimate: Decimal
    actual: Decimal
    latency: float
    failure: str | None  # None | "provider" | "caller"
    provider: str
    model: str
    input_tokens: int
    output_tokens: int


def plan_calls(cfg: DemoConfig, rng: random.Random, n_small: int) -> list[CallPlan]:
    plans = []
    lo, hi = cfg.latency_ms
    for n in range(cfg.calls):
        agent = 0 if rng.random() < 0.4 or n_small == 0 else 1 + rng.randrange(n_small)
        estimate = usd(rng.uniform(0.01, 0.05))
        roll = rng.random()
        if roll < 0.08:  # the provider billed more than the estimate
            actual = usd(estimate * Decimal(str(rng.uniform(1.05, 1.6))))
        else:
            actual = usd(estimate * Decimal(str(rng.uniform(0.4, 1.0))))
        fail_roll = rng.random()
        failure = "provider" if fail_roll < 0.05 else "caller" if fail_roll < 0.07 else None
        provider, model = rng.choice(MODELS)
        plans.append(
            CallPlan(
                n=n,
                agent=agent,
                estimate=estimate,
                actual=actual,
                latency=rng.uniform(lo, hi) / 1000.0,
                failure=failure,
                provider=provider,
                model=model,
                input_tokens=rng.randint(200, 4000),
                output_tokens=rng.randint(50, 1200),
            )
        )
    return plans


class OutageClient(BudgetClient):
    """The budget API as an application sees it, with a switch that makes reserve() find the database
    unreachable (a simulated outage: the rest of the demo keeps its connections)."""

    def __init__(self, db: Database, outage: threading.Event) -> None:
        super().__init__(db)
        self.outage = outage

    def reserve(self, agent_id: str, estimate_usd: Decimal, ttl_seconds: float, key: str) -> dict[str, Any]:
        if self.outage.is_set():
            raise Unavailable("simulated outage: the budget database does not answer")
        return super().reserve(agent_id, estimate_usd, ttl_seconds, key)


def make_call(guard: BudgetGuard, agent: Agent, plan: CallPlan, run: str, tally: Tally) -> None:
    """One simulated LLM call through the guard; records in the tally what the guard acknowledged."""
    tally.bump(agent.name, calls=1)
    holder: list[Reservation] = []
    try:
        with guard.reserve(agent.id, plan.estimate, key=f"demo:{run}:call:{plan.n}") as res:
            holder.append(res)
            time.sleep(plan.latency)
            if plan.failure == "provider":
                raise SimulatedLLMError(f"call {plan.n}: provider error")
            res.set_cost(
                plan.actual,
                input_tokens=plan.input_tokens,
                output_tokens=plan.output_tokens,
                model=plan.model,
                provider=plan.provider,
                metadata={"demo_run": run, "call": plan.n},
            )
            if plan.failure == "caller":
                raise SimulatedCallerError(f"call {plan.n}: could not parse the answer")
    except BudgetExceeded as exc:
        by_team = "level=team" in (exc.detail or "")
        tally.bump(agent.name, denied=1, denied_by_team=int(by_team))
        time.sleep(plan.latency / 2)  # the agent does something else before its next call
        return
    except BudgetUnavailable:
        tally.bump(agent.name, refused_unavailable=1)
        time.sleep(plan.latency / 2)
        return
    except (SimulatedLLMError, SimulatedCallerError):
        pass  # the guard released or settled; the outcome says which
    except Exception as exc:
        log.error(
            "call %s of %s failed: %s", plan.n, agent.name, exc, exc_info=log.isEnabledFor(logging.DEBUG)
        )
        if not holder:
            tally.bump(agent.name, errors=1)
            return
        # reserved: the outcome below says what became of the hold (an error when it is still open)
    res = holder[0]
    if res.outcome == "settled" and res.settlement is not None:
        actual = usd(res.settlement["actual_usd"])
        overrun = usd(res.settlement["overrun_usd"] or 0)
        tally.bump(
            agent.name,
            settled=1,
            records=1,
            acknowledged_usd=actual,
            overruns=int(overrun > 0),
            overrun_usd=overrun,
        )
    elif res.outcome == "released":
        tally.bump(agent.name, released=1)
    elif res.outcome == "fail-open":
        if res.actual_usd is not None:
            tally.bump(
                agent.name,
                fail_open=1,
                records=1,
                fail_open_usd=res.actual_usd,
                acknowledged_usd=res.actual_usd,
            )
        else:
            tally.bump(agent.name, fail_open=1)
    elif res.outcome == "settle-deferred" and res.actual_usd is not None:
        # the cost went to the tracker (ledger key reservation:<id>); the hold is released after the run
        tally.bump(
            agent.name, deferred=1, records=1, deferred_usd=res.actual_usd, acknowledged_usd=res.actual_usd
        )
        tally.leftover(res.reservation_id)
    elif res.outcome == "release-failed":
        tally.bump(agent.name, released=1)
        tally.leftover(res.reservation_id)
    elif res.outcome == "recorded-after-expiry" and res.actual_usd is not None:
        tally.bump(agent.name, settled=1, records=1, acknowledged_usd=res.actual_usd)
    else:
        tally.leftover(res.reservation_id)
        log.warning("call %s of %s ended as %s", plan.n, agent.name, res.outcome)
        tally.bump(agent.name, errors=1)


# ---------------------------------------------------------------------------------------------------------
# The signal feed


@dataclass
class Company:
    name: str
    aliases: list[str]
    id: str = ""


def make_companies(n: int, run: str, rng: random.Random) -> list[Company]:
    companies: list[Company] = []
    seen: set[str] = set()
    while len(companies) < n:
        stem = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if stem.lower() in seen:
            continue
        seen.add(stem.lower())
        sector = rng.choice(SECTORS)
        # the run token keeps names unique across runs on a shared database (aliases are unique)
        name = f"{stem} {sector} {run}"
        ticker = (stem[:4] + sector[0] + run[:2]).upper()
        while ticker.lower() in seen:
            ticker += str(len(companies) % 10)
        seen.add(ticker.lower())
        companies.append(Company(name, [f"{stem} {run}", ticker, f"{stem} {sector} Inc {run}"]))
    return companies


def feed_lines(
    cfg: DemoConfig,
    run: str,
    companies: list[Company],
    rng: random.Random,
    stop: threading.Event,
    pace: Callable[[float], bool] | None = None,
) -> Iterator[str]:
    """JSON lines of the generated feed; ``pace(fraction)`` waits until the run is that far along (False:
    stop). Stops yielding when the demo is asked to stop."""
    start = time.time() - 86400
    sent: list[str] = []
    for j in range(cfg.signals):
        if stop.is_set() or (pace is not None and not pace(j / cfg.signals)):
            return
        roll = rng.random()
        if roll < 0.02 and sent:  # a re-sent item: ingestion is idempotent per (source, external_id)
            yield rng.choice(sent)
            continue
        picks = rng.sample(companies, k=min(len(companies), rng.choice((1, 1, 2, 3))))
        mentions = []
        for c in picks:
            label = rng.choice([c.name, *c.aliases])
            mentions.append(
                rng.choice((label, label.lower(), label.upper())) if rng.random() < 0.3 else label
            )
        if rng.random() < 0.03:  # a variant nobody registered: becomes a new entity, merged later
            mentions.append(f"{picks[0].name} Holdings")
        item: dict[str, Any] = {
            "source": f"demo-{run}-{SOURCES[j % len(SOURCES)]}",
            "external_id": f"{j:06d}",
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + j * 86400 / cfg.signals)),
            "content": f"{picks[0].name} {rng.choice(('raises', 'hires', 'launches', 'expands', 'acquires'))}",
            "payload": {"score": round(rng.random(), 3)},
            "mentions": mentions,
        }
        if roll > 0.995:  # a malformed item: rejected with its reason, the batch goes on
            del item["occurred_at"]
        line = json.dumps(item)
        sent.append(line)
        yield line


# ---------------------------------------------------------------------------------------------------------
# The run


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


class Demo:
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
        self.graph: Any = None  # harness.demo_graph.GraphProjection while it runs
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
        tracker = CostTracker(
            db, spool_dir / f"costs-{self.run_id}.jsonl", batch_size=200, flush_interval=0.5
        )
        tracker.start()
        if self.graph_mode == "on":
            from harness.demo_graph import GraphProjection

            self.graph = GraphProjection(self.owner_dsn, self.neo4j_uri, self.err, self.stop)
            self.graph.start()  # Neo4j starts while the Postgres side works; ingestion never waits for it
        try:
            self._execute(db, tracker)
        finally:
            if self.graph is not None and not self.report.graph:
                self.report.graph = self.graph.finish(interrupted=True)
            tracker.close()  # flush the rest (or spool it) before anything is checked
            try:
                self._report(db, tracker)
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
        held = 0
        for rid in self.tally.leftover_holds:
            try:
                client.release(rid)
                held += 1
            except SigledgerError as exc:
                self.report.violations.append(f"reservation {rid} left open: {exc}")
        self.report.calls = {
            "planned": cfg.calls,
            "started": started[0],
            "guard": dict(guard.stats),
            "breaker_state": guard.breaker.state,
            "holds_released_after_outage": held,
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
            self.report.opportunities = self._opportunities(db)
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

    # opportunities ----------------------------------------------------------------------------------------
    def _opportunities(self, db: Database) -> dict[str, Any]:
        rng = random.Random(self.cfg.seed + 2)
        result: Counter[str] = Counter()
        first_merge: tuple[str, str] | None = None
        # entity variants ("X Holdings") created from unknown mentions are merged into their company
        for c in self.companies:
            variant = db.call_one(
                "SELECT sigledger.resolve_entity(p_name => %s::text) AS id", (f"{c.name} Holdings",)
            )
            if variant and variant["id"] is not None and str(variant["id"]) != c.id:
                row = db.call_one(
                    "SELECT moved_links FROM sigledger.merge_entities(p_target => %s::uuid, p_sources => %s::uuid[])",
                    (c.id, [str(variant["id"])]),
                )
                result["entity_merges"] += 1
                result["entity_links_moved"] += int(row["moved_links"]) if row else 0
        for c in self.companies:
            if self.stop.is_set():
                break
            signal_ids = [
                str(r["signal_id"])
                for r in db.call(
                    "SELECT signal_id FROM sigledger.entity_signals_of(p_entity_id => %s::uuid)", (c.id,)
                )
            ]
            if not signal_ids:
                continue
            # two or three agents each opened an opportunity about the same company: duplicates
            opp_ids = []
            for k in range(rng.choice((1, 2, 2, 3))):
                row = db.call_one(
                    "SELECT sigledger.create_opportunity(p_title => %s::text, p_description => %s::text,"
                    " p_score => %s::numeric, p_value_usd => %s::numeric, p_attributes => %s::jsonb) AS id",
                    (
                        f"Opportunity at {c.name}",
                        None if k == 0 else f"seen by agent {k}",
                        round(rng.uniform(10, 95), 2),
                        round(rng.uniform(1000, 250000), 2),
                        json.dumps({"source_agent": k, "run": self.run_id}),
                    ),
                )
                assert row is not None
                opp_ids.append(str(row["id"]))
                subset = rng.sample(signal_ids, k=max(1, int(len(signal_ids) * 0.6)))
                linked = db.call_one(
                    "SELECT linked FROM sigledger.link_signals(p_opportunity_id => %s::uuid, p_signal_ids => %s::uuid[])",
                    (opp_ids[-1], subset),
                )
                result["opportunities"] += 1
                result["links"] += int(linked["linked"]) if linked else 0
            if len(opp_ids) > 1:
                merged = merge_opportunities(db, uuid.UUID(opp_ids[0]), [uuid.UUID(o) for o in opp_ids[1:]])
                result["merges"] += 1
                result["merged_sources"] += len(opp_ids) - 1
                result["moved_links"] += int(merged["moved_links"])
                result["duplicate_links"] += int(merged["duplicate_links"])
                first_merge = first_merge or (opp_ids[0], opp_ids[1])
        if first_merge is not None:
            # a late duplicate merge of an opportunity that is already a tombstone: refused, nothing changes
            target, source = first_merge
            try:
                merge_opportunities(db, uuid.UUID(target), [uuid.UUID(source)])
                result["unexpected_merges"] += 1
            except MergeConflict as exc:
                result["refused_merges"] += 1
                self.report.opportunities_refused = str(exc).splitlines()[0]
        return dict(result)

    # report -----------------------------------------------------------------------------------------------
    def _report(self, db: Database, tracker: CostTracker) -> None:
        self._tell_stop()
        rep = self.report
        rep.interrupted = self.stop_reason
        rep.elapsed_seconds = round(time.monotonic() - self.started, 1)
        rep.tracker = {k: v for k, v in tracker.stats.items()}
        spooled = [p for p in tracker._spool_files() if p.stat().st_size > 0]
        if spooled:
            rep.violations.append(
                f"costs left in the spool (not yet in the ledger): {', '.join(map(str, spooled))}"
            )
        agents = getattr(self, "agents", [])
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
                    r["budget_id"] == self.team_id and not any(x["budget_id"] == self.team_id for x in rows)
                ):
                    rows.append(r)
        for a in agents:
            t = self.tally.agents[a.name]
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
            acknowledged = usd(self.tally.total("acknowledged_usd", names))
            explained = usd(
                self.tally.total("overrun_usd", names)
                + self.tally.total("fail_open_usd", names)
                + self.tally.total("deferred_usd", names)
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
                "calls": self.tally.total("calls", names),
                "settled": self.tally.total("settled", names),
                "denied": self.tally.total("denied", names),
                "denied_by_team": self.tally.total("denied_by_team", names),
                "released": self.tally.total("released", names),
                "overruns": self.tally.total("overruns", names),
                "fail_open": self.tally.total("fail_open", names),
                "refused_unavailable": self.tally.total("refused_unavailable", names),
                "deferred": self.tally.total("deferred", names),
                "errors": self.tally.total("errors", names),
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
            if d["budget_id"] in by_budget or d["budget_id"] == self.team_id
        ]
        rep.reconcile = drift
        if drift:
            rep.violations.append(f"reconcile_budgets: {len(drift)} budget(s) drift from the ledger")
        alerts = db.call(
            "SELECT threshold, count(*) AS n FROM sigledger.budget_alerts WHERE budget_id = ANY(%s::bigint[])"
            " GROUP BY threshold ORDER BY threshold",
            ([*by_budget, self.team_id],),
        )
        rep.alerts = {f"{Decimal(a['threshold']) * 100:.0f}%": int(a["n"]) for a in alerts}
        over = db.call_one(
            "SELECT count(*) AS n, coalesce(sum(overrun_usd), 0) AS usd FROM sigledger.budget_overruns"
            " WHERE agent_id = ANY(%s::uuid[])",
            (ids,),
        )
        assert over is not None
        rep.overruns = {"count": int(over["n"]), "usd": str(usd(over["usd"]))}
        if int(over["n"]) != self.tally.total("overruns"):
            rep.violations.append(
                f"budget_overruns lists {over['n']} overruns, the guard reported {self.tally.total('overruns')}"
            )
        errors = self.tally.total("errors")
        if errors:
            rep.calls["errors"] = errors

    # printing ---------------------------------------------------------------------------------------------
    def print_report(self) -> None:
        rep, w = self.report, self.out.write
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
        w(
            f"overruns: {rep.overruns.get('count', 0)} (${rep.overruns.get('usd', '0')} above their estimates)\n"
        )
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
        self.out.flush()


# ---------------------------------------------------------------------------------------------------------
# Entry point


def prepare_local_database(err: TextIO, cluster: LocalCluster | None = None) -> tuple[str, str]:
    """Start the local cluster, drop and recreate the demo database, migrate it. Returns the DSNs of the app
    role (the demo's calls) and of the superuser (the graph sync)."""
    import psycopg

    from harness.migrate import Migrator

    cluster = cluster or LocalCluster.default()
    cluster.start()
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DEMO_DATABASE}")
    started = time.monotonic()
    applied = Migrator(cluster.dsn(DEMO_DATABASE)).up()
    err.write(
        f"local cluster {cluster.dsn(DEMO_DATABASE, user='sigledger_admin')} (stays up; `sigledger db down` stops it): database recreated, {len(applied)} migration steps"
        f" in {time.monotonic() - started:.1f}s\n"
    )
    # The demo administers budgets and makes calls (sigledger_admin: the API plus budget administration);
    # its graph worker runs as sigledger_graph, like a deployed one.
    return cluster.dsn(DEMO_DATABASE, user="sigledger_admin"), cluster.dsn(
        DEMO_DATABASE, user="sigledger_graph"
    )


def migrate_existing(dsn: str, err: TextIO) -> None:
    """Apply what is pending (a no-op when up to date). An application role may not even read the history:
    then the schema is taken as deployed, and the first API call says otherwise if it is not."""
    import psycopg

    from harness.migrate import Migrator

    try:
        Migrator(dsn).up()
    except (psycopg.errors.InsufficientPrivilege, SigledgerError) as exc:
        if getattr(exc, "sqlstate", None) != "42501":
            raise
        err.write("not migrating: this role may not (the schema is taken as deployed)\n")


def run(
    cfg: DemoConfig,
    *,
    dsn: str | None = None,
    neo4j_uri: str | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    report_json: Path | None = None,
    cluster: LocalCluster | None = None,
    with_graph: bool = True,
) -> int:
    """Run the demo; returns the exit code (0 ok, 1 a check failed, 130/143 interrupted with every check held)."""
    if not with_graph:
        graph = "--no-graph"
    elif dsn is not None and neo4j_uri is None:
        graph = "an existing database (--dsn) is projected only into an existing Neo4j: pass --neo4j-uri"
    elif importlib.util.find_spec("harness.graph.worker") is None:
        graph = "the graph projection is not part of this build"
    else:
        graph = "on"
    if dsn is None:
        dsn, owner_dsn = prepare_local_database(err, cluster)
    else:
        migrate_existing(dsn, err)
        owner_dsn = dsn
    demo = Demo(dsn, cfg, out=out, err=err, neo4j_uri=neo4j_uri, owner_dsn=owner_dsn, graph=graph)
    quieted = []
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        # every fail-open call and breaker transition would log a warning: the status line counts them instead
        for name in ("sigledger.budget", "sigledger.breaker"):
            logger = logging.getLogger(name)
            quieted.append((logger, logger.level))
            logger.setLevel(logging.ERROR)
    handlers: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, demo.request_stop)
    try:
        demo.execute()
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
        for logger, level in quieted:
            logger.setLevel(level)
    rep = demo.report
    if rep.violations:
        rep.exit_code = EXIT_VIOLATION
    elif rep.interrupted == "SIGINT":
        rep.exit_code = EXIT_SIGINT
    elif rep.interrupted == "SIGTERM":
        rep.exit_code = EXIT_SIGTERM
    else:
        rep.exit_code = EXIT_OK
    demo.print_report()
    if report_json is not None:
        report_json.write_text(rep.to_json())
    return rep.exit_code
