"""The issue-4 migrations roll back and re-apply cleanly (down files drop what depends on them; the runner
re-applies the repeatable function files), and the API works again afterwards."""

from __future__ import annotations

import psycopg
from sigledger.migrate import Migrator


def test_v5_down_and_up_again(empty_db_dsn: str) -> None:
    migrator = Migrator(empty_db_dsn)
    migrator.up()
    rolled_back = migrator.down(
        "4_099", force=True
    )  # above the ledger/budget range (V4), which has its own down files
    # Later ranges (V6_ graph projection, ...) roll back first; the V5 ones in reverse order.
    versions = [label.split("__")[0] for label in rolled_back]
    assert [v for v in versions if v.startswith("V5_")] == ["V5_003", "V5_002", "V5_001"]
    with psycopg.connect(empty_db_dsn) as conn:
        gone = conn.execute(
            "SELECT to_regclass('sigledger.opportunity_merges'), to_regclass('sigledger.entity_aliases_alias_lower_key')"
        ).fetchone()
        assert gone == (None, None)
    migrator.up()
    assert migrator.verify() == []
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT created, linked_entities FROM sigledger.ingest_signal('mig', '1', now(), '{}', ARRAY['Acme'])"
        ).fetchone()
        assert row == (True, 1)
        views = {r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'sigledger'")}
        assert {"merge_history", "entity_with_aliases", "opportunity_signal_links"} <= views
