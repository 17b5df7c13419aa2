"""BudgetGuard's circuit breaker against a real outage: our own cluster is stopped and started again.

Opens after the threshold, then fails fast (no database attempt), honours each budget's fail policy
(fail-open lets the call through and records its cost through the CostTracker spool; fail-closed raises
SLB04), goes half-open after the reset timeout and closes again once Postgres is back."""

from __future__ import annotations

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
