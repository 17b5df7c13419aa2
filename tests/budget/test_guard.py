"""BudgetGuard against a real database: settle on exit, release on exception, retries only for retry-safe
SQLSTATEs (here a real 55P03: another session holds the budget row longer than the function's lock_timeout),
and real outages in the middle of a reservation (a cost after expiry is deferred, a failed release is logged)."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from sigledger.budget import BudgetClient, BudgetGuard
from sigledger.core.db import Database
from sigledger.core.errors import BudgetExceeded, Retryable
from sigledger.ledger.client import CostRecord, Ledger
from sigledger.ledger.tracker import CostTracker

from tests.budget.conftest import OwnCluster, wait_reachable


def test_settles_on_exit_releases_on_exception(db_dsn: str) -> None:
    with Database(db_dsn) as db:
        guard = BudgetGuard(db)
        agent = BudgetClient(db).create_agent("guard-a", Decimal("1.00"))
        with guard.reserve(agent, Decimal("0.40")) as r:
            r.set_cost(Decimal("0.30"), input_tokens=5, output_tokens=7, model="m", provider="p")
        assert r.outcome == "settled" and r.settlement is not None
        with pytest.raises(RuntimeError), guard.reserve(agent, Decimal("0.40")) as r2:
            raise RuntimeError("the LLM call failed")
        assert r2.outcome == "released"
        with pytest.raises(BudgetExceeded) as exc, guard.reserve(agent, Decimal("0.80")):
            pytest.fail("must not run")
        assert exc.value.detail is not None and exc.value.detail.startswith("remaining_usd=0.7")
        assert guard.stats["retries"] == 0  # a refusal is not retried
        status = BudgetClient(db).status(agent)[0]
        assert (status["spent_usd"], status["reserved_usd"]) == (Decimal("0.3"), Decimal("0"))


def test_retries_a_lock_timeout_until_the_row_is_free(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        # a short bound for this test database only (the shipped default is 5s)
        admin.execute(
            "ALTER FUNCTION sigledger.reserve_budget(uuid, numeric, interval, text) SET lock_timeout = '100ms'"
        )
    with Database(db_dsn) as db:
        agent = BudgetClient(db).create_agent("guard-b", Decimal("10"))
        BudgetClient(db).check_and_record(agent, Decimal("0"))  # the period row exists
        holder = psycopg.connect(db_dsn)
        holder.execute("SELECT 1 FROM sigledger.budget_spend FOR UPDATE")  # held until commit

        def release_later() -> None:
            time.sleep(0.6)
            holder.commit()

        t = threading.Thread(target=release_later)
        t.start()
        guard = BudgetGuard(db, max_attempts=30, base_delay=0.05, max_delay=0.2)
        with guard.reserve(agent, Decimal("1")) as r:
            r.set_cost(Decimal("1"), model="m", provider="p")
        t.join()
        holder.close()
        assert r.outcome == "settled"
        assert guard.stats["retries"] >= 1

        # with too few attempts the Retryable error reaches the caller, and nothing was held
        holder = psycopg.connect(db_dsn)
        holder.execute("SELECT 1 FROM sigledger.budget_spend FOR UPDATE")
        try:
            with (
                pytest.raises(Retryable),
                BudgetGuard(db, max_attempts=2, base_delay=0.01).reserve(agent, Decimal("1")),
            ):
                pytest.fail("must not run")
        finally:
            holder.rollback()
            holder.close()
        assert BudgetClient(db).status(agent)[0]["reserved_usd"] == 0


class _OutageBeforeRecordCost(Ledger):
    """The database goes away between the SLB02 of settle and the follow-up record_cost (a real stop)."""

    def __init__(self, db: Database, cluster: OwnCluster) -> None:
        super().__init__(db)
        self.cluster = cluster

    def record_cost(self, record: CostRecord) -> int:
        self.cluster.stop()
        return super().record_cost(record)


def _expire(db: Database, reservation_id: int) -> None:
    """Run the sweep until it has expired this reservation (its TTL is a few milliseconds)."""
    for _ in range(1000):
        BudgetClient(db).expire()
        row = db.call_one("SELECT state FROM sigledger.budget_reservation WHERE id = %s", (reservation_id,))
        if row is not None and row["state"] == "expired":
            return
        time.sleep(0.01)
    raise AssertionError(f"reservation {reservation_id} never expired")


def test_cost_after_expiry_is_spooled_when_the_database_goes_away(
    own_cluster: OwnCluster, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    db = Database(own_cluster.dsn, min_size=0, max_size=4, timeout=1.0)
    db.open(wait=False)
    try:
        agent = BudgetClient(db).create_agent("guard-expired-outage", Decimal("10"))
        tracker = CostTracker(db, spool, flush_interval=3600).start()
        guard = BudgetGuard(db, tracker=tracker, max_attempts=1)
        guard.ledger = _OutageBeforeRecordCost(db, own_cluster)
        with guard.reserve(agent, Decimal("1"), ttl_seconds=0.01) as r:
            assert r.reservation_id is not None
            _expire(db, r.reservation_id)
            r.set_cost(Decimal("0.70"), model="m", provider="p")
        # settle said SLB02, then record_cost met the outage: the cost went to the tracker, nothing raised
        assert r.outcome == "record-deferred-after-expiry"
        tracker.close()  # the database is down: the cost is spooled
        assert tracker.stats["spooled"] == 1
    finally:
        own_cluster.start()
    try:
        wait_reachable(db)
        CostTracker(db, spool).start().close()  # the next start replays
        row = db.call_one(
            "SELECT cost_usd, metadata FROM sigledger.llm_cost_log WHERE idempotency_key = %s",
            (f"reservation:{r.reservation_id}",),
        )
        assert row is not None and row["cost_usd"] == Decimal("0.70") and row["metadata"]["expired"] is True
    finally:
        db.close()


def test_release_during_an_outage_does_not_raise_out_of_the_block(own_cluster: OwnCluster) -> None:
    db = Database(own_cluster.dsn, min_size=0, max_size=4, timeout=1.0)
    db.open(wait=False)
    try:
        agent = BudgetClient(db).create_agent("guard-release-outage", Decimal("10"))
        guard = BudgetGuard(db, max_attempts=1)  # no tracker
        try:
            # three holds taken while the database is up; then it goes away before any of them is closed
            with (
                guard.reserve(agent, Decimal("1")) as r1,
                pytest.raises(RuntimeError, match="caller's"),
                guard.reserve(agent, Decimal("1")) as r2,
            ):
                with (
                    pytest.raises(RuntimeError, match="caller's") as exc,
                    guard.reserve(agent, Decimal("1")) as r3,
                ):
                    r3.set_cost(Decimal("0.5"), model="m", provider="p")
                    own_cluster.stop()
                    raise RuntimeError("the caller's own error")
                raise RuntimeError("the caller's own error")
            # r1 left without set_cost(): the release met the outage, logged; the hold expires at its TTL
            assert r1.outcome == "release-failed"
            # the caller's own exception reached the caller, though the release failed
            assert r2.outcome == "release-failed"
            # the cost was set and settling met the outage with no tracker to defer it to: the caller still gets
            # its own exception, with the cleanup failure noted on it (and logged)
            assert any("BudgetUnavailable" in note for note in getattr(exc.value, "__notes__", []))
            assert guard.stats["release_failed"] == 2
        finally:
            own_cluster.start()
    finally:
        db.close()
