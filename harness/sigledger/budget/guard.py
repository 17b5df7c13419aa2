# Generated from sigledger/budget/aguard.py by tools/async_to_sync.py: do not edit, change the async source
# and run `make sync-gen`.
"""``BudgetGuard``: reserve before an LLM call, settle after it (``BudgetClient`` is in client.py).

``reserve`` is the way to spend::

    async with guard.reserve("support-bot", Decimal("0.05")) as r:
        reply = await call_the_llm()
        r.set_cost(Decimal("0.043"), input_tokens=812, output_tokens=230, model="gpt-x", provider="openai")

Entering holds the estimate (SLB01 -> ``BudgetExceeded``), leaving settles with the actual cost, an exception
inside the block releases the hold. Database calls go through a circuit breaker that counts outcomes without
serialising calls; only 40001, 40P01 and 55P03 are retried (with backoff and jitter), which is safe because every
call carries an idempotency key. When the database is unreachable, the budget's fail policy decides: ``closed``
raises ``BudgetUnavailable`` (SLB04), ``open`` lets the call through and records its cost through the
CostTracker (journaled until the database is back), so the ledger and reconcile_budgets account for it. A settle
that meets an outage, a read-only server (25006), disk full or any error that is not about its data or state
sends the cost through the tracker too (``settle-deferred``); a raw psycopg error never leaves it.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from sigledger.budget.breaker import Breaker
from sigledger.budget.client import Agent, BudgetClient
from sigledger.budget.reservation import Reservation
from sigledger.core import _compat as aio
from sigledger.core import metrics
from sigledger.core.db import Database
from sigledger.core.errors import (
    DATA_ERRORS,
    BudgetExceeded,
    BudgetUnavailable,
    Conflict,
    ReservationExpired,
    Retryable,
    SigledgerError,
    Unavailable,
    primary_message,
)
from sigledger.core.money import money
from sigledger.ledger.client import Ledger

if TYPE_CHECKING:
    from sigledger.ledger.tracker import CostTracker

__all__ = ["BudgetGuard", "Reservation"]

log = logging.getLogger("sigledger.budget")

T = TypeVar("T")


def _deferrable(exc: BaseException) -> bool:
    """A database error that says nothing about this reservation's values or state (an outage, a read-only server
    after a failover, disk full, retries exhausted, an unmapped SQLSTATE): the money is spent, so the cost goes
    through the tracker. A data error (DATA_ERRORS) or a conflict (SLB03: settled differently) is the caller's."""
    return isinstance(exc, (SigledgerError, psycopg.Error)) and not isinstance(exc, (*DATA_ERRORS, Conflict))


class BudgetGuard:
    """Reserve/settle as a context manager, behind a circuit breaker, with retries for retry-safe errors."""

    def __init__(
        self,
        db: Database,
        *,
        breaker: Breaker | None = None,
        tracker: CostTracker | None = None,
        default_fail_policy: str = "closed",
        ttl_seconds: float = 600.0,
        max_attempts: int = 5,
        base_delay: float = 0.02,
        max_delay: float = 1.0,
        sleep: Callable[[float], Any] = aio.sleep,
    ) -> None:
        if default_fail_policy not in ("open", "closed"):
            raise ValueError(f"default_fail_policy must be open or closed, got {default_fail_policy!r}")
        self.client = BudgetClient(db)
        self.ledger = Ledger(db)
        self.breaker = breaker if breaker is not None else Breaker()
        self.tracker = tracker
        self.default_fail_policy = default_fail_policy
        self.ttl_seconds = ttl_seconds
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        # the last fail policy the database told us per agent: what applies while it cannot tell us
        self._policies: dict[str, str] = {}
        self.stats: Counter[str] = Counter()

    def remember_policy(self, agent_id: str, policy: str) -> None:
        self._policies[agent_id] = policy

    def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Through the breaker; 40001/40P01/55P03 (Retryable) retried with exponential backoff and full jitter.
        The breaker counts the outcome; it holds no lock while the call runs (calls run side by side)."""
        attempt = 1
        while True:
            self.breaker.before()
            try:
                result = func(*args, **kwargs)
            except Retryable as exc:
                self.breaker.record(exc)
                self.stats["retries"] += 1
                if attempt >= self.max_attempts:
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                self._sleep(random.uniform(0, delay))
                attempt += 1
                continue
            except BaseException as exc:
                self.breaker.record(exc)
                raise
            self.breaker.record(None)
            return result

    @contextmanager
    def reserve(
        self,
        agent_id: Agent,
        estimate_usd: Decimal | int,
        *,
        ttl_seconds: float | None = None,
        key: str | None = None,
    ) -> Iterator[Reservation]:
        """Hold ``estimate_usd`` for the block (BudgetExceeded when it does not fit); call ``set_cost`` inside
        it; leaving settles, an exception releases. ``agent_id``: the agent's id or name."""
        key = key or f"guard:{uuid.uuid4()}"
        estimate = money(estimate_usd, "estimate_usd")
        agent_id = str(agent_id)
        try:
            row = self._call(self.client.reserve, agent_id, estimate, ttl_seconds or self.ttl_seconds, key)
        except BudgetExceeded:
            self.stats["denied"] += 1
            metrics.BUDGET_DECISIONS.labels(outcome="denied").inc()
            raise
        except Unavailable as exc:
            res = self._unavailable(agent_id, estimate, key, exc)
        else:
            self._policies[agent_id] = row["fail_policy"]
            res = Reservation(
                agent_id=agent_id,
                estimate_usd=estimate,
                idempotency_key=key,
                fail_policy=row["fail_policy"],
                reservation_id=int(row["reservation_id"]),
                remaining_usd=row["remaining_usd"],
            )
            self.stats["reserved"] += 1
            metrics.BUDGET_DECISIONS.labels(outcome="reserved").inc()
        try:
            yield res
        except BaseException as caller_exc:
            try:
                self._abort(res)
            except Exception as cleanup_exc:
                # the caller's own exception is what the caller sees; the cleanup failure is logged and noted
                log.exception("reservation cleanup after %r failed", caller_exc)
                caller_exc.add_note(f"sigledger: reservation cleanup also failed: {cleanup_exc!r}")
            raise
        else:
            self._finish(res)

    def _unavailable(self, agent_id: str, estimate: Decimal, key: str, exc: Exception) -> Reservation:
        policy = self._policies.get(agent_id, self.default_fail_policy)
        if policy == "open" and self.tracker is not None:
            self.stats["fail_open"] += 1
            metrics.BUDGET_DECISIONS.labels(outcome="fail_open").inc()
            log.warning("budget database unavailable (%s); agent %s fails open", exc, agent_id)
            return Reservation(
                agent_id=agent_id,
                estimate_usd=estimate,
                idempotency_key=key,
                fail_policy=policy,
                fail_open=True,
            )
        self.stats["fail_closed"] += 1
        metrics.BUDGET_DECISIONS.labels(outcome="fail_closed").inc()
        raise BudgetUnavailable(
            f"budget database unavailable and agent {agent_id} fails closed: {exc}", sqlstate="SLB04"
        ) from exc

    def _record_later(self, res: Reservation, key: str, **metadata: Any) -> None:
        """The call happened and cost money but cannot be settled now: through the tracker (spooled if needed)."""
        if self.tracker is None:
            raise BudgetUnavailable(f"cannot record the cost of {key}: no CostTracker", sqlstate="SLB04")
        self.tracker.record(res.cost_record(key, **metadata))

    def _abort(self, res: Reservation) -> None:
        if res.fail_open:
            if res.actual_usd is not None:  # the call ran (and cost) before the block failed
                self._record_later(res, f"{res.idempotency_key}:fail-open", fail_open=True)
            res.outcome = "fail-open"
            return
        assert res.reservation_id is not None
        if res.actual_usd is not None:
            # the LLM answered and then the caller's code failed: the money is spent, settle it
            self._finish(res)
            return
        self._release(res)

    def _release(self, res: Reservation) -> None:
        """Release the hold; during an outage leave it to expire at its TTL (logged, not raised)."""
        assert res.reservation_id is not None
        try:
            self._call(self.client.release, res.reservation_id)
            res.outcome = "released"
            self.stats["released"] += 1
        except Exception as exc:
            if not _deferrable(exc):
                raise
            res.outcome = "release-failed"  # the hold expires at its TTL
            self.stats["release_failed"] += 1
            log.warning(
                "could not release reservation %s (%s); it expires at its TTL",
                res.reservation_id,
                primary_message(exc),
            )

    def _finish(self, res: Reservation) -> None:
        if res.fail_open:
            if res.actual_usd is not None:
                self._record_later(
                    res,
                    f"{res.idempotency_key}:fail-open",
                    fail_open=True,
                    estimate_usd=str(res.estimate_usd),
                )
                self.stats["fail_open_recorded"] += 1
            res.outcome = "fail-open"
            return
        assert res.reservation_id is not None
        if res.actual_usd is None:
            log.warning("reservation %s left without set_cost(): released", res.reservation_id)
            self._release(res)
            return
        try:
            res.settlement = self._call(
                self.client.settle,
                res.reservation_id,
                res.actual_usd,
                input_tokens=res.input_tokens,
                output_tokens=res.output_tokens,
                model=res.model,
                provider=res.provider,
                metadata=res.metadata,
            )
            res.outcome = "settled"
            self.stats["settled"] += 1
            if res.settlement and res.settlement["overrun_usd"] and res.settlement["overrun_usd"] > 0:
                metrics.BUDGET_OVERRUNS.inc()
        except ReservationExpired:
            # the sweep released the hold first: the cost still happened, record it under the settle key
            key = f"reservation:{res.reservation_id}"
            try:
                self._call(self.ledger.record_cost, res.cost_record(key, expired=True))
            except Exception as exc:
                if not _deferrable(exc):
                    raise
                # the database went away (or turned read-only) in between: through the tracker like a deferred settle, same key
                self._record_later(res, key, expired=True)
                res.outcome = "record-deferred-after-expiry"
                self.stats["record_deferred_after_expiry"] += 1
            else:
                res.outcome = "recorded-after-expiry"
                self.stats["recorded_after_expiry"] += 1
        except Exception as exc:
            if not _deferrable(exc):
                raise
            # the settle met an outage, a read-only server, disk full...: the hold expires at its TTL and the cost
            # goes through the tracker under the settle's key (journaled, written once the database can write)
            log.warning("settle of reservation %s deferred: %s", res.reservation_id, primary_message(exc))
            self._record_later(res, f"reservation:{res.reservation_id}", settle_deferred=True)
            res.outcome = "settle-deferred"
            self.stats["settle_deferred"] += 1
