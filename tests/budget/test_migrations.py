"""The V4 migrations (ledger and budgets) roll back and re-apply cleanly, and the API works afterwards."""

from __future__ import annotations

import psycopg

from harness.migrate import Migrator


def test_v4_down_and_up_again(empty_db_dsn: str) -> None:
    migrator = Migrator(empty_db_dsn)
    migrator.up()
    rolled_back = [label.split("__")[0] for label in migrator.down("3_011")]
    assert rolled_back[-3:] == ["V4_003", "V4_002", "V4_001"]
    with psycopg.connect(empty_db_dsn) as conn:
        row = conn.execute(
            """SELECT to_regclass('sigledger.budget_spend'), to_regclass('sigledger.model_price'),
                      (SELECT count(*) FROM pg_attribute WHERE attrelid = 'sigledger.llm_cost_log'::regclass
                          AND attname = 'charged_at'),
                      to_regclass('sigledger.llm_cost_log')"""
        ).fetchone()
        assert row == (None, None, 0, "sigledger.llm_cost_log")  # the baseline ledger keeps its shape
    migrator.up()
    assert migrator.verify() == []
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        agent = conn.execute("SELECT sigledger.create_agent('mig-agent', 1)").fetchone()
        assert agent is not None
        res = conn.execute(
            "SELECT reservation_id FROM sigledger.reserve_budget(%s, 0.5)", (agent[0],)
        ).fetchone()
        assert res is not None
        settled = conn.execute(
            "SELECT actual_usd FROM sigledger.settle_budget(%s, 0.25)", (res[0],)
        ).fetchone()
        assert settled is not None and float(settled[0]) == 0.25
        assert conn.execute("SELECT count(*) FROM sigledger.reconcile_budgets()").fetchone() == (0,)
