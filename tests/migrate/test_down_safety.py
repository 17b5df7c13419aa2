"""`down` with data: refused without --force, listing every table and column it would drop with its row count
(nothing changed); with --force it rolls back, and `up` then brings the same data back to head (merges,
partitions, outbox: every domain), repairing what the rollback took (merged_at)."""

from __future__ import annotations

import psycopg
import pytest

from tests.migrate.dumps import built_a_month_earlier, schema_dump
from tests.migrate.helpers import cli_process, history

PARTITIONS = "SELECT tableoid::regclass::text FROM sigledger.llm_cost_log ORDER BY id"


def fill_every_domain(conn: psycopg.Connection) -> dict[str, int]:
    """Rows in every domain, through the API: budgets and the partitioned ledger, prices, signals, merged
    entities and opportunities (with their history), outbox events."""
    agent = conn.execute("SELECT sigledger.create_agent('down-agent', 10)").fetchone()[0]  # type: ignore[index]
    for i in range(3):
        res = conn.execute("SELECT reservation_id FROM sigledger.reserve_budget(%s, 1)", (agent,)).fetchone()
        conn.execute("SELECT sigledger.settle_budget(%s, 0.25)", (res[0],))  # type: ignore[index]
        conn.execute("SELECT sigledger.record_cost(%s, %s, 'm', 'p', 1, 1, 0.01)", (f"down-{i}", agent))
    conn.execute("SELECT sigledger.add_model_price('p', 'm', 1, 2)")
    acme = conn.execute("SELECT sigledger.create_entity('Acme', ARRAY['ACME Corp'])").fetchone()[0]  # type: ignore[index]
    dup = conn.execute("SELECT sigledger.create_entity('Acme Inc')").fetchone()[0]  # type: ignore[index]
    conn.execute(
        "SELECT * FROM sigledger.ingest_signal('rss', 'x-1', now(), p_mentions => ARRAY['Acme', 'Acme Inc'])"
    )
    conn.execute("SELECT * FROM sigledger.merge_entities(%s, ARRAY[%s]::uuid[])", (acme, dup))
    o1 = conn.execute("SELECT sigledger.create_opportunity('Deal')").fetchone()[0]  # type: ignore[index]
    o2 = conn.execute("SELECT sigledger.create_opportunity('Deal (dup)')").fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT * FROM sigledger.merge_opportunities(%s, ARRAY[%s]::uuid[])", (o1, o2))
    counts = {}
    for table in (
        "llm_cost_log",
        "entities",
        "entity_aliases",
        "signals",
        "signal_entities",
        "opportunities",
    ):
        counts[table] = conn.execute(f"SELECT count(*) FROM sigledger.{table}").fetchone()[0]  # type: ignore[index]
    return counts


@pytest.mark.parametrize("clock", ["now", "template of the month before"])
def test_down_with_data_is_refused_with_what_it_would_lose_then_round_trips_with_force(
    db_dsn: str, clock: str
) -> None:
    # "template of the month before": the template's partitions are those of a month earlier, so the ledger rows
    # of now go to a monthly partition (unless it is a month's last day: the earlier cutoff is still ahead);
    # V4_004's down folds every partition into the plain table, which its up attaches again as the legacy
    # partition of today's cutoff
    if clock == "template of the month before":
        built_a_month_earlier(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        counts = fill_every_domain(conn)
        outbox = conn.execute("SELECT count(*) FROM sigledger.outbox").fetchone()[0]  # type: ignore[index]
    assert outbox > 0
    before, versions = schema_dump(db_dsn), [r[0] for r in history(db_dsn)]

    refused = cli_process(["migrate", "down", "--to", "V3_010", "--dsn", db_dsn])
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lost = refused.stderr
    for line in (
        "table sigledger.budget: 1 row(s) (V4_002__budgets)",
        "table sigledger.budget_reservation: 3 row(s) (V4_002__budgets)",
        "table sigledger.model_price: 1 row(s) (V4_001__cost_ledger)",
        "table sigledger.entity_merges: 1 row(s) (V5_001__ingest_schema)",
        "table sigledger.opportunity_merges: 1 row(s) (V5_001__ingest_schema)",
        f"table sigledger.outbox: {outbox} row(s) (V3_011__outbox)",
        "column sigledger.llm_cost_log.charged_at: 6 row(s) (V4_001__cost_ledger)",
        "column sigledger.entities.merged_at: 1 row(s) (V5_001__ingest_schema)",
    ):
        assert line in lost, lost
    assert "llm_cost_log_key" not in lost  # derived from the ledger, which V4_004's down keeps whole
    assert schema_dump(db_dsn) == before and [r[0] for r in history(db_dsn)] == versions

    everything = cli_process(["migrate", "down", "--to", "0", "--dsn", db_dsn])
    assert everything.returncode == 1 and "table sigledger.llm_cost_log: 6 row(s)" in everything.stderr
    assert schema_dump(db_dsn) == before

    forced = cli_process(["migrate", "down", "--to", "V3_010", "--force", "--dsn", db_dsn])
    assert forced.returncode == 0, forced.stdout + forced.stderr
    up = cli_process(["migrate", "up", "--dsn", db_dsn])
    assert up.returncode == 0, up.stdout + up.stderr
    verify = cli_process(["migrate", "verify", "--dsn", db_dsn])
    assert verify.returncode == 0, verify.stdout
    assert schema_dump(db_dsn) == before
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for table, count in counts.items():
            assert conn.execute(f"SELECT count(*) FROM sigledger.{table}").fetchone() == (count,), table
        assert (
            conn.execute(PARTITIONS).fetchall()
            == [("sigledger.llm_cost_log_legacy",)] * counts["llm_cost_log"]
        )
        stamped = conn.execute(
            "SELECT count(*) FROM sigledger.entities WHERE merged_into IS NOT NULL AND merged_at = updated_at"
        ).fetchone()
        assert stamped == (1,)
        assert conn.execute(
            "SELECT count(*) FROM sigledger_meta.repair_history WHERE rule = 'tombstones without merged_at'"
        ).fetchone() == (1,)
