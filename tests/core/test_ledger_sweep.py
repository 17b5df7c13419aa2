"""The ledger's partition sweep (_ensure_ledger_partitions, 115_ledger_partitions.sql) against a DEFAULT
partition that another session holds: a concurrent index build there (V8_101 builds one on every partition,
CONCURRENTLY), an autovacuum, a maintenance query on the partition itself. Creating a partition takes ACCESS
EXCLUSIVE on the parent and then on DEFAULT; waiting for DEFAULT while holding the parent stopped every ledger
write for the sweep's lock_timeout (5 s), then the sweep failed with 55P03 (the review of V8_101: an insert
waited 4.5 s). The sweep now takes the parent's lock, then DEFAULT's without waiting: when DEFAULT is busy it
creates nothing, says so in a WARNING, and the next sweep tries again. No duration is asserted: the sweep's
outcome is (an error before, a WARNING and the partitions it could make after)."""

from __future__ import annotations

import psycopg


def test_a_busy_default_partition_makes_the_sweep_skip_not_stall(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        before = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'sigledger.llm_cost_log'::regclass"
        ).fetchone()[0]  # type: ignore[index]
    holder = psycopg.connect(db_dsn)
    try:
        # the lock a CREATE INDEX CONCURRENTLY (or a VACUUM) holds on the partition for its whole run
        holder.execute("LOCK TABLE sigledger.llm_cost_log_default IN SHARE UPDATE EXCLUSIVE MODE")
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            notices: list[str] = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            created = conn.execute("SELECT sigledger.ensure_ledger_partitions(8)").fetchone()[0]  # type: ignore[index]
            assert created == 0
            assert any("DEFAULT partition is busy" in n for n in notices), notices
            # nothing was left locked: a ledger read through the parent goes on at once
            conn.execute("SET lock_timeout = '100ms'")
            conn.execute("SELECT count(*) FROM sigledger.llm_cost_log").fetchone()
    finally:
        holder.rollback()
        holder.close()
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        # DEFAULT free: the next sweep makes the months it skipped
        assert conn.execute("SELECT sigledger.ensure_ledger_partitions(8)").fetchone()[0] > 0  # type: ignore[index]
        after = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'sigledger.llm_cost_log'::regclass"
        ).fetchone()[0]  # type: ignore[index]
    assert after > before
