"""BudgetGuard against a real database: settle on exit, release on exception, retries only for retry-safe
SQLSTATEs (here a real 55P03: another session holds the budget row longer than the function's lock_timeout)."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import psycopg
import pytest

from harness.budget import BudgetClient, BudgetGuard
from harness.db import Database
from harness.errors import BudgetExceeded, Retryable


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
