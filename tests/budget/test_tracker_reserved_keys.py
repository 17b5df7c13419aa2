"""A cost the CostTracker sends under a reservation's key whose ledger row was written before the key space was
reserved (issue 13's review, item 4). settle_budget refuses such a cost with 23505 (the key holds an older row of
the reservation's agent at another amount, or both of the reservation's keys hold rows of another agent):
record_costs must quarantine that row like any other conflict, so that the tracker's flush completes. Before,
the 23505 failed the whole batch; the tracker takes a Conflict for server trouble (not the records' fault) and
kept the batch in its journal, sending it again at every flush, forever."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import psycopg
from sigledger.budget import BudgetClient
from sigledger.core.db import Database
from sigledger.ledger.client import CostRecord
from sigledger.ledger.tracker import CostTracker

from tests.budget.conftest import ledger_keys
from tests.budget.test_cost_tracker import journal_files, make_agent


def old_row_then_reservation(dsn: str, agent: str, row_agent: str, amount: str, *extra_keys: str) -> int:
    """An application row under the key of the next reservation (written by the owner, as an earlier release
    let applications do), then that reservation of ``agent``; returns its id."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        nxt = conn.execute(
            "SELECT nextval(pg_get_serial_sequence('sigledger.budget_reservation', 'id')) + 1"
        ).fetchone()
        assert nxt is not None
        for key in (f"reservation:{nxt[0]}", *(k.format(id=nxt[0]) for k in extra_keys)):
            conn.execute(
                "INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)"
                " VALUES (%s, %s, 'm', 'p', %s)",
                (key, row_agent, Decimal(amount)),
            )
        row = conn.execute(
            "SELECT reservation_id FROM sigledger.reserve_budget(%s, 0.4)", (agent,)
        ).fetchone()
    assert row is not None and row[0] == nxt[0]
    return int(row[0])


def test_a_reservation_key_taken_by_an_older_row_is_quarantined_not_retried_forever(
    db_dsn: str, app_dsn: str, tmp_path: Path
) -> None:
    with Database(db_dsn) as db:
        agent = BudgetClient(db).create_agent("tracker-old-key", Decimal(10))
    other = make_agent(db_dsn, "tracker-old-key-other")
    own = old_row_then_reservation(db_dsn, agent, agent, "0.25")  # the agent's own row at another amount
    foreign = old_row_then_reservation(db_dsn, agent, other, "0.1", "reservation:{id}:settlement")
    spool = tmp_path / "spool"
    with Database(app_dsn) as db:
        tracker = CostTracker(db, spool, flush_interval=3600).start()
        for key, cost in (
            (f"reservation:{own}", "0.3"),
            (f"reservation:{foreign}", "0.2"),
            ("old-key-good", "0.01"),
        ):
            tracker.record(
                CostRecord(
                    agent_id=agent, model="m", provider="p", cost_usd=Decimal(cost), idempotency_key=key
                )
            )
        flushes = 0
        while (tracker.pending() or journal_files(spool)) and flushes < 3:  # bounded: one flush must do
            tracker.flush()
            flushes += 1
        assert (tracker.pending(), journal_files(spool), flushes) == (0, [], 1), "the batch is not retried"
        assert (tracker.stats["flushed"], tracker.stats["quarantined"]) == (1, 2)
        tracker.close()
    assert ledger_keys(db_dsn, "old-key-") == ["old-key-good"]
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, sqlstate, reason FROM sigledger.cost_quarantine ORDER BY id"
        ).fetchall()
        states = conn.execute(
            "SELECT id, state FROM sigledger.budget_reservation WHERE id IN (%s, %s) ORDER BY id",
            (own, foreign),
        ).fetchall()
    assert [(k, s) for k, s, _ in rows] == [
        (f"reservation:{own}", "23505"),
        (f"reservation:{foreign}", "23505"),
    ]
    assert "at 0.25 USD, written before the key space was reserved, not 0.3 USD" in rows[0][2], rows[0][2]
    assert f"the ledger keys of reservation {foreign} are taken by other rows" in rows[1][2], rows[1][2]
    assert states == [(own, "open"), (foreign, "open")], "nothing settled"
    assert not tracker.rejected_path.exists()
