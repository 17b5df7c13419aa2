"""The V4 migrations (ledger and budgets) roll back and re-apply cleanly, and the API works afterwards."""

from __future__ import annotations

import psycopg
from sigledger.migrate import Migrator


def test_v4_down_and_up_again(empty_db_dsn: str) -> None:
    migrator = Migrator(empty_db_dsn)
    migrator.up()
    rolled_back = [label.split("__")[0] for label in migrator.down("3_011", force=True)]
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


def test_v4_004_partitions_a_ledger_with_rows(empty_db_dsn: str) -> None:
    """V4_004 on a ledger that already has rows: ids, keys and the reservation FK survive, the identity
    continues, a replayed key returns the old id; down restores the plain table with every row."""
    migrator = Migrator(empty_db_dsn)
    migrator.up("4_003")
    agent = "00000000-0000-0000-0000-00000000d401"
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO sigledger.agent_registry (id, name) VALUES (%s, 'old-rows')", (agent,))
        old_ids = [
            row[0]
            for row in conn.execute(
                """INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd, created_at)
                   SELECT 'old-' || g, %s, 'm', 'p', 0.01 * g, now() - g * interval '20 days'
                     FROM generate_series(1, 5) g RETURNING id""",
                (agent,),
            ).fetchall()
        ]
        conn.execute(
            """INSERT INTO sigledger.budget_reservation (idempotency_key, agent_id, estimate_usd, budget_ids,
                   period_starts, expires_at, state, closed_at, actual_usd, overrun_usd, ledger_id)
               VALUES ('old-res', %s, 1, '{1}', ARRAY[now()], now() + interval '1 hour', 'settled', now(), 0.01, 0,
                       %s)""",
            (agent, old_ids[0]),
        )
    migrator.up()
    assert migrator.verify() == []
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = 'sigledger.llm_cost_log'::regclass"
        ).fetchone() == ("p",)
        rows = conn.execute(
            "SELECT id, tableoid::regclass::text FROM sigledger.llm_cost_log ORDER BY id"
        ).fetchall()
        assert rows == [(i, "sigledger.llm_cost_log_legacy") for i in sorted(old_ids)]
        assert conn.execute("SELECT count(*) FROM sigledger.llm_cost_log_key").fetchone() == (5,)
        replay = conn.execute(
            "SELECT sigledger.record_cost('old-3', %s, 'm', 'p', 1, 1, 9)", (agent,)
        ).fetchone()
        assert replay == (old_ids[2],)
        new = conn.execute(
            "SELECT sigledger.record_cost('new-1', %s, 'm', 'p', 1, 1, 0.5)", (agent,)
        ).fetchone()
        assert new is not None and new[0] > max(old_ids)
    migrator.down("4_003", force=True)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = 'sigledger.llm_cost_log'::regclass"
        ).fetchone() == ("r",)
        assert conn.execute("SELECT count(*), max(id) FROM sigledger.llm_cost_log").fetchone() == (6, new[0])
        assert conn.execute("SELECT to_regclass('sigledger.llm_cost_log_key')").fetchone() == (None,)
        after = conn.execute(
            """INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)
               VALUES ('after-down', %s, 'm', 'p', 1) RETURNING id""",
            (agent,),
        ).fetchone()
        assert after is not None and after[0] > new[0]
    migrator.up()
    assert migrator.verify() == []
