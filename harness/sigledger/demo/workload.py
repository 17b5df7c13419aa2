"""The demo's workload: its configuration, the agents and budgets it creates, the simulated LLM calls
made through BudgetGuard (with a simulated outage), and the generated feed of signals."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from sigledger.budget import BudgetClient, BudgetGuard, Reservation
from sigledger.core.db import Database
from sigledger.core.errors import (
    BudgetExceeded,
    BudgetUnavailable,
    Unavailable,
)

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
    # Limits as a fraction of the expected demand's sizing (1: the hot agent, some small agents and the team run
    # out when most calls go through; smaller: they run out even when an outage refuses many calls).
    limit_scale: Decimal = Decimal(1)


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
        self.leftover_holds: list[int] = []  # reservations whose release was deferred by an outage
        # reservations whose settle went to the tracker: its ledger row (key reservation:<id>) settles the hold
        # when it lands, with the overrun of an actual above the estimate
        self.deferred_settles: list[int] = []

    def leftover(self, reservation_id: int | None) -> None:
        if reservation_id is not None:
            with self._lock:
                self.leftover_holds.append(reservation_id)

    def deferred_settle(self, reservation_id: int | None) -> None:
        if reservation_id is not None:
            with self._lock:
                self.deferred_settles.append(reservation_id)

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
    mean_cost = Decimal("0.021") * cfg.limit_scale  # mean estimate 0.03 x mean actual/estimate ~0.7
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

    def reserve(
        self, agent_id: str | uuid.UUID, estimate_usd: Decimal | int, ttl_seconds: float, key: str
    ) -> dict[str, Any]:
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
        tally.deferred_settle(res.reservation_id)
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
