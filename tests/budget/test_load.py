"""Multi-process load on a few budgets (one hot, one with grace, two under a team budget): 8 worker
processes, hundreds of calls each, random failures between reserve and settle, random retries of reserve and
settle. An observer samples every spend row the whole time. Afterwards: ledger sums equal recorded spend,
reconciliation finds no drift, no duplicate under retried keys, no session left idle in transaction."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

import psycopg
from sigledger.budget import BudgetClient
from sigledger.core.db import Database

from tests.budget.conftest import popen

PROCESSES = 8
CALLS = 200
TTL = 2.0


def test_load_never_overspends(db_dsn: str) -> None:
    with Database(db_dsn) as db:
        client = BudgetClient(db)
        team = db.call_one("SELECT sigledger.create_group_budget('team', 'load-team', 8.00) AS id")
        assert team is not None
        agents = [
            client.create_agent("load-hot", Decimal("12.00")),
            client.create_agent("load-grace", Decimal("3.00"), grace_ratio=Decimal("0.10")),
            client.create_agent("load-t1", Decimal("5.00"), period="daily", parent_budget_id=team["id"]),
            client.create_agent("load-t2", Decimal("5.00"), period="monthly", parent_budget_id=team["id"]),
        ]
    # the hot agent takes half of the calls
    agent_arg = ",".join([agents[0]] * 3 + agents[1:])

    violations: list[tuple[object, ...]] = []
    observations = 0
    stop = threading.Event()

    def observe() -> None:
        nonlocal observations
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    "SELECT budget_id, period_start, spent_usd, reserved_usd, cap_usd, excess_usd"
                    " FROM sigledger.budget_spend"
                ).fetchall()
                for row in rows:
                    _, _, spent, reserved, cap, excess = row
                    # no overruns and no after-the-fact costs in this run: excess must stay 0 as well
                    if spent + reserved > cap or excess != 0:
                        violations.append(row)
                observations += 1
                time.sleep(0.002)

    observer = threading.Thread(target=observe)
    observer.start()
    procs = [
        popen(
            "load",
            "--dsn",
            db_dsn,
            "--agents",
            agent_arg,
            "--calls",
            str(CALLS),
            "--seed",
            str(seed),
            "--ttl",
            str(TTL),
        )
        for seed in range(PROCESSES)
    ]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        time.sleep(TTL + 0.5)  # abandoned holds pass their TTL
        stop.set()
        observer.join()

    total = {k: sum(r[k] for r in results) for k in results[0]}
    print(f"load: {PROCESSES} processes, {total}, {observations} observations of every spend row")
    assert total["reserved"] + total["denied"] == PROCESSES * CALLS
    assert total["denied"] > 0, "the budgets were never exhausted: the test did not test the limit"
    assert total["abandoned"] > 0 and total["settle_retries"] > 0 and total["reserve_retries"] > 0
    assert observations > 10
    assert violations == [], f"spent + reserved above the cap: {violations[:5]}"

    with Database(db_dsn) as db:
        client = BudgetClient(db)
        assert client.expire() == total["abandoned"]
        assert client.reconcile() == [], "recorded spend drifts from the ledger"
        summary = db.call_one(
            """SELECT (SELECT count(*) FROM sigledger.budget_reservation) AS reservations,
                      (SELECT count(DISTINCT idempotency_key) FROM sigledger.budget_reservation) AS keys,
                      (SELECT count(*) FROM sigledger.budget_reservation WHERE state = 'settled') AS settled,
                      (SELECT count(*) FROM sigledger.budget_reservation WHERE state = 'open') AS open,
                      (SELECT count(*) FROM sigledger.llm_cost_log) AS ledger_rows,
                      (SELECT count(DISTINCT reservation_id) FROM sigledger.llm_cost_log) AS ledger_reservations,
                      (SELECT sum(reserved_usd) FROM sigledger.budget_spend) AS reserved,
                      (SELECT sum(spent_usd) FROM sigledger.budget_spend s JOIN sigledger.budget b ON b.id = s.budget_id
                        WHERE b.level = 'agent') AS agent_spent,
                      (SELECT sum(cost_usd) FROM sigledger.llm_cost_log) AS ledger_sum"""
        )
        assert summary is not None
        assert summary["reservations"] == summary["keys"] == total["reserved"], (
            "a retried reserve made a second hold"
        )
        assert (
            summary["settled"] == summary["ledger_rows"] == summary["ledger_reservations"] == total["settled"]
        )
        assert summary["open"] == 0 and summary["reserved"] == 0
        assert summary["agent_spent"] == summary["ledger_sum"]
        team_spent = db.call_one(
            "SELECT sum(spent_usd) AS s FROM sigledger.budget_spend s JOIN sigledger.budget b ON b.id = s.budget_id"
            " WHERE b.level = 'team'"
        )
        members = db.call_one(
            "SELECT sum(cost_usd) AS s FROM sigledger.llm_cost_log WHERE agent_id = ANY(%s::uuid[])",
            (agents[2:],),
        )
        assert team_spent is not None and members is not None and team_spent["s"] == members["s"]
        idle = db.call_one(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%%'"
        )
        assert idle is not None and idle["n"] == 0


SLICE_PROCESSES = 8


def test_slices_refuse_only_when_the_whole_budget_is_full(db_dsn: str) -> None:
    """A hot $2.00 budget split over 8 slices, drained by 8 processes holding $0.01 at a time (half of them
    also through reserve_budgets, three holds per call), settling or releasing each. Every refusal must report
    less than $0.01 left in the whole budget (a slice without room is rebalanced, never a reason to refuse);
    an observer checks every slice's backstop and that the caps always sum to the budget's cap; afterwards
    every remaining cent can still be reserved, one by one: the last dollar is reachable."""
    with Database(db_dsn) as db:
        agent = BudgetClient(db).create_agent("slices-hot", Decimal("2.00"))
        row = db.call_one(
            "SELECT sigledger.set_budget_slices((SELECT id FROM sigledger.budget WHERE agent_id = %s::uuid), 8) AS n",
            (agent,),
        )
        assert row is not None and row["n"] == 8

    violations: list[tuple[object, ...]] = []
    observations = 0
    stop = threading.Event()

    def observe() -> None:
        nonlocal observations
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    "SELECT s.slice, s.spent_usd, s.reserved_usd, s.cap_usd, s.excess_usd, s.frozen_usd"
                    " FROM sigledger.budget_spend s JOIN sigledger.budget b ON b.id = s.budget_id"
                    " WHERE b.agent_id = %s::uuid",
                    (agent,),
                ).fetchall()
                total = sum(r[3] + (r[5] or 0) for r in rows)
                if rows and total != Decimal("2.00"):
                    violations.append(("caps sum", total))
                for r in rows:
                    if r[1] + r[2] > r[3] or r[4] != 0:
                        violations.append(r)
                observations += 1
                time.sleep(0.002)

    observer = threading.Thread(target=observe)
    observer.start()
    procs = [
        popen(
            "drain",
            "--dsn",
            db_dsn,
            "--agent",
            agent,
            "--seed",
            str(seed),
            *(["--batch"] if seed % 2 else []),
        )
        for seed in range(SLICE_PROCESSES)
    ]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        stop.set()
        observer.join()

    total = {k: sum(r[k] for r in results) for k in results[0]}
    print(f"slices: {SLICE_PROCESSES} processes, {total}, {observations} observations")
    assert total["refused"] > 0 and total["batches"] > 0 and total["released"] > 0
    assert total["refused_with_room"] == 0, "a caller was refused while the budget had room"
    assert violations == [], violations[:5]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        spent, reserved = conn.execute(
            "SELECT spent_usd, reserved_usd FROM sigledger.budget_status(%s::uuid)", (agent,)
        ).fetchone()  # type: ignore[misc]
        assert reserved == 0 and spent == Decimal("0.01") * total["settled"]
        room = Decimal("2.00") - spent
        taken = 0
        for i in range(int(room / Decimal("0.01")) + 1):
            try:
                conn.execute(
                    "SELECT * FROM sigledger.reserve_budget(%s::uuid, 0.01, interval '1 minute', %s)",
                    (agent, f"last-{i}"),
                )
                taken += 1
            except psycopg.Error as exc:
                assert exc.diag.sqlstate == "SLB01", exc
                break
        assert Decimal("0.01") * taken == room, "some of the remaining room could not be reserved"
        assert conn.execute("SELECT count(*) FROM sigledger.reconcile_budgets()").fetchone() == (0,)
