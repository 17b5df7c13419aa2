"""BudgetGuard's circuit breaker against a real outage: our own cluster is stopped and started again.

Opens after the threshold, then fails fast (no database attempt), honours each budget's fail policy
(fail-open lets the call through and records its cost through the CostTracker spool; fail-closed raises
SLB04), goes half-open after the reset timeout and closes again once Postgres is back."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sigledger.budget import BudgetClient, BudgetGuard
from sigledger.budget.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerOpen
from sigledger.core.db import Database
from sigledger.core.errors import BudgetExceeded, BudgetUnavailable, Unavailable
from sigledger.ledger.tracker import CostTracker

from tests.budget.conftest import OwnCluster, wait_reachable

RESET = 1.0


def test_breaker_against_a_real_outage(own_cluster: OwnCluster, tmp_path: Path) -> None:
    db = Database(own_cluster.dsn, min_size=0, max_size=4, timeout=1.0)
    db.open(wait=False)
    tracker = CostTracker(db, tmp_path / "spool", flush_interval=0.2).start()
    breaker = Breaker(fail_max=3, reset_timeout=RESET, success_threshold=2)
    guard = BudgetGuard(db, breaker=breaker, tracker=tracker)
    client = BudgetClient(db)
    fail_open = client.create_agent("breaker-open", Decimal("10"), fail_policy="open")
    fail_closed = client.create_agent("breaker-closed", Decimal("10"), fail_policy="closed")
    try:
        # normal operation; the guard learns each budget's policy from the database
        for agent in (fail_open, fail_closed):
            with guard.reserve(agent, Decimal("0.50")) as r:
                r.set_cost(Decimal("0.40"), model="m", provider="p")
            assert r.outcome == "settled"
        # a business error does not count as an outage
        with pytest.raises(BudgetExceeded), guard.reserve(fail_closed, Decimal("100")):
            pass
        assert breaker.state == CLOSED and breaker.fail_counter == 0

        own_cluster.stop()
        for _ in range(3):
            with pytest.raises(BudgetUnavailable) as failed, guard.reserve(fail_closed, Decimal("0.10")):
                pytest.fail("a fail-closed budget let a call through during an outage")
            assert isinstance(failed.value.__cause__, Unavailable)
            assert not isinstance(failed.value.__cause__, BreakerOpen)  # these reached for the database
        assert breaker.state == OPEN

        # open: fail fast, the database is not tried
        with pytest.raises(BudgetUnavailable) as fast, guard.reserve(fail_closed, Decimal("0.10")):
            pass
        assert isinstance(fast.value.__cause__, BreakerOpen)
        assert fast.value.sqlstate == "SLB04"

        # fail-open budget: let through, and what was let through is recorded
        with guard.reserve(fail_open, Decimal("0.30")) as let_through:
            let_through.set_cost(Decimal("0.25"), model="m", provider="p")
        assert let_through.fail_open and let_through.outcome == "fail-open"
        assert guard.stats["fail_open"] == 1 and guard.stats["fail_closed"] == 4

        own_cluster.start()
        wait_reachable(db)  # outside the breaker; then let the reset timeout pass (waits, not assertions)
        time.sleep(RESET + 0.3)
        with guard.reserve(fail_closed, Decimal("0.10")) as r:
            assert breaker.state == HALF_OPEN  # one success so far; two are needed
            r.set_cost(Decimal("0.05"), model="m", provider="p")
        assert breaker.state == CLOSED
    finally:
        own_cluster.start()
        tracker.close()

    with Database(own_cluster.dsn) as check:
        rows = check.call(
            "SELECT cost_usd, metadata FROM sigledger.llm_cost_log WHERE agent_id = %s::uuid ORDER BY id",
            (fail_open,),
        )
        assert [r["cost_usd"] for r in rows] == [Decimal("0.40"), Decimal("0.25")]
        assert rows[1]["metadata"].get("fail_open") is True
        status = BudgetClient(check).status(fail_open)
        assert status[0]["spent_usd"] == Decimal("0.65")
        assert BudgetClient(check).reconcile() == []
    db.close()


def test_breaker_lets_threads_call_at_the_same_time() -> None:
    # pybreaker held its lock for the whole call: 4 threads x pg_sleep(0.5) took 2 s through one breaker. Here
    # the 4 calls must be inside the breaker at once: each waits at a barrier that opens only when all 4 are
    # there (a serialising breaker breaks the barrier at its timeout instead)
    breaker = Breaker(fail_max=3)
    barrier = threading.Barrier(4, timeout=20)
    results: list[object] = []

    def call() -> None:
        try:
            results.append(breaker.call(barrier.wait))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1, 2, 3], results  # type: ignore[type-var]


def test_outage_every_thread_waits_at_the_same_time_and_the_first_call_after_restart_succeeds(
    own_cluster: OwnCluster, tmp_path: Path
) -> None:
    """6 threads through one BudgetGuard while the server is down: all 6 wait for a connection at the same time
    (seen in the pool's own count of waiting requests), not one after another. After a long outage the pool's
    reconnection backoff would be 8 s and more; bounded, the first call after the server is back (and the
    breaker's reset timeout has passed) is served."""
    db = Database(own_cluster.dsn, min_size=1, max_size=6, timeout=2.0)
    db.open()
    client = BudgetClient(db)
    agent = client.create_agent("breaker-threads", Decimal("100"), fail_policy="closed")
    guard = BudgetGuard(db, breaker=Breaker(fail_max=50, reset_timeout=RESET))
    with guard.reserve(agent, Decimal("0.01")) as r:
        r.set_cost(Decimal("0.01"), model="m", provider="p")
    outcomes: list[str] = []
    inside = peak = 0
    count_lock = threading.Lock()
    getconn = db.pool.getconn

    def counting_getconn(*args: object, **kwargs: object) -> object:
        nonlocal inside, peak
        with count_lock:
            inside += 1
            peak = max(peak, inside)
        try:
            return getconn(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with count_lock:
                inside -= 1

    db.pool.getconn = counting_getconn  # type: ignore[method-assign]
    try:
        own_cluster.stop()

        def call() -> None:
            try:
                with guard.reserve(agent, Decimal("0.01")):
                    outcomes.append("let through")
            except BudgetUnavailable:
                outcomes.append("refused")

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert outcomes == ["refused"] * 6
        assert peak == 6, f"at most {peak} threads waited for a connection at the same time"
        # keep the outage going long enough for an unbounded reconnection backoff to grow past 8 s
        end = time.monotonic() + 9
        while time.monotonic() < end:
            with pytest.raises(BudgetUnavailable), guard.reserve(agent, Decimal("0.01")):
                pass
            time.sleep(0.5)
    finally:
        own_cluster.start()
    time.sleep(RESET + 0.2)  # the breaker's reset timeout (a wait, not an assertion)
    with guard.reserve(agent, Decimal("0.01")) as r:
        r.set_cost(Decimal("0.01"), model="m", provider="p")
    assert r.outcome == "settled"
    db.close()
