"""The V4 migrations (ledger and budgets) roll back and re-apply cleanly, and the API works afterwards."""

from __future__ import annotations

from decimal import Decimal

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
        # a reservation released, then its cost recorded under its key (record_cost of an expired or released
        # hold): both written before the key registry existed
        released = conn.execute(
            """INSERT INTO sigledger.budget_reservation (idempotency_key, agent_id, estimate_usd, budget_ids,
                   period_starts, expires_at, state, closed_at)
               VALUES ('old-released', %s, 1, '{1}', ARRAY[now()], now() + interval '1 hour', 'released', now())
               RETURNING id""",
            (agent,),
        ).fetchone()[0]  # type: ignore[index]
        released_row = conn.execute(
            """INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd,
                   reservation_id, created_at)
               VALUES ('reservation:' || %s, %s, 'm', 'p', 0.07, %s, now() - interval '40 days') RETURNING id""",
            (released, agent, released),
        ).fetchone()[0]  # type: ignore[index]
    migrator.up()
    assert migrator.verify() == []
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        # the backfilled registry holds each row's own created_at (_reservation_settle and _cost_insert read the
        # row by the registry's id and created_at)
        assert conn.execute(
            "SELECT count(*) FROM sigledger.llm_cost_log_key k JOIN sigledger.llm_cost_log l"
            " ON l.id = k.ledger_id AND l.created_at = k.created_at AND l.idempotency_key = k.idempotency_key"
        ).fetchone() == (6,)
        # the cost recorded again under the released reservation's key: a replay of the old row
        replayed = conn.execute(
            "SELECT sigledger.record_cost('reservation:' || %s, %s, 'm', 'p', 1, 1, 0.07)", (released, agent)
        ).fetchone()
        assert replayed == (released_row,)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = 'sigledger.llm_cost_log'::regclass"
        ).fetchone() == ("p",)
        rows = conn.execute(
            "SELECT id, tableoid::regclass::text FROM sigledger.llm_cost_log ORDER BY id"
        ).fetchall()
        assert rows == [(i, "sigledger.llm_cost_log_legacy") for i in sorted([*old_ids, released_row])]
        assert conn.execute("SELECT count(*) FROM sigledger.llm_cost_log_key").fetchone() == (6,)
        replay = conn.execute(
            "SELECT sigledger.record_cost('old-3', %s, 'm', 'p', 1, 1, 0.03)", (agent,)
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
        assert conn.execute("SELECT count(*), max(id) FROM sigledger.llm_cost_log").fetchone() == (7, new[0])
        assert conn.execute("SELECT to_regclass('sigledger.llm_cost_log_key')").fetchone() == (None,)
        after = conn.execute(
            """INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)
               VALUES ('after-down', %s, 'm', 'p', 1) RETURNING id""",
            (agent,),
        ).fetchone()
        assert after is not None and after[0] > new[0]
    migrator.up()
    assert migrator.verify() == []


def test_v8_080_exact_money_is_online_on_a_big_ledger(empty_db_dsn: str) -> None:
    """V8_080 (ledger money numeric(14,6) -> exact numeric) on a partitioned ledger of 100,000 rows, run statement
    by statement as the runner runs a no-transaction file, each observed in its own transaction: no statement
    holds ACCESS EXCLUSIVE on a ledger partition while it reads rows (the type change touches the catalog only;
    the scans are the VALIDATEs, under SHARE UPDATE EXCLUSIVE, which lets inserts through), no partition is
    rewritten, a view on the columns keeps its definition, options, comment and grants (column-level ones too), the
    columns have statistics again, and afterwards an amount of 10 decimal places is stored as given."""
    from sigledger.core.paths import migrations_dir
    from sigledger.migrate.files import discover_migrations

    migrator = Migrator(empty_db_dsn)
    migrator.up("8_061")
    agent = "00000000-0000-0000-0000-00000000e081"
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO sigledger.agent_registry (id, name) VALUES (%s, 'exact-money')", (agent,))
        # bulk: the key registry filled in one statement rather than by the per-row trigger
        conn.execute("ALTER TABLE sigledger.llm_cost_log DISABLE TRIGGER llm_cost_log_register_key")
        conn.execute(
            """INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd, priced_usd,
                                                   created_at, charged_at)
               SELECT 'old-' || g, %s, 'm', 'p', 0.000001 * g, 0.000002 * g, now() - (g %% 5) * interval '1 day',
                      now() - (g %% 5) * interval '1 day'
                 FROM generate_series(1, 100000) g""",
            (agent,),
        )
        conn.execute("ALTER TABLE sigledger.llm_cost_log ENABLE TRIGGER llm_cost_log_register_key")
        conn.execute(
            "INSERT INTO sigledger.llm_cost_log_key (idempotency_key, ledger_id, created_at)"
            " SELECT idempotency_key, id, created_at FROM sigledger.llm_cost_log"
        )
        # a view on the columns, as a repeatable file makes one (owned by the owner role)
        conn.execute("SET ROLE sigledger_owner")
        conn.execute(
            "CREATE VIEW sigledger.money_probe WITH (security_barrier = true) AS"
            " SELECT id, cost_usd, priced_usd FROM sigledger.llm_cost_log WHERE cost_usd > 0"
        )
        conn.execute("COMMENT ON VIEW sigledger.money_probe IS 'probe'")
        conn.execute("GRANT SELECT ON sigledger.money_probe TO sigledger_readonly")
        conn.execute("GRANT SELECT (id, cost_usd) ON sigledger.money_probe TO sigledger_graph")
        conn.execute("RESET ROLE")
        conn.execute("ANALYZE sigledger.llm_cost_log")
        parts = [
            r[0]
            for r in conn.execute(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'sigledger.llm_cost_log'::regclass"
            ).fetchall()
        ]
        nodes = dict(
            conn.execute(
                "SELECT c.oid::regclass::text, c.relfilenode FROM pg_class c WHERE c.oid::regclass::text = ANY(%s)",
                (parts,),
            ).fetchall()
        )

    (migration,) = [m for m in discover_migrations(migrations_dir()) if m.label.startswith("V8_080")]
    assert not migration.up.transactional
    observed = []
    total = 0  # (the transaction's table statistics are read cumulatively: each statement's own reads are the step)
    with psycopg.connect(empty_db_dsn) as conn:
        conn.execute("SET ROLE sigledger_owner")
        conn.commit()
        for stmt in migration.up.statements:
            conn.execute(stmt.sql.encode("utf-8"))
            locks = conn.execute(
                """SELECT DISTINCT mode FROM pg_locks
                    WHERE pid = pg_backend_pid() AND locktype = 'relation'
                      AND relation::regclass::text = ANY(%s)""",
                (parts,),
            ).fetchall()
            read = conn.execute(
                "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0) FROM pg_stat_xact_user_tables"
                " WHERE schemaname = 'sigledger' AND relname LIKE 'llm_cost_log%%' AND relname <> 'llm_cost_log_key'"
            ).fetchone()
            assert read is not None
            observed.append((stmt.line, {m for (m,) in locks}, max(0, int(read[0]) - total)))
            total = max(total, int(read[0]))
            conn.commit()
    exclusive = [o for o in observed if "AccessExclusiveLock" in o[1]]
    assert exclusive, observed  # the catalog change itself
    assert all(o[2] == 0 for o in exclusive), f"a scan under ACCESS EXCLUSIVE: {observed}"
    validating = [o for o in observed if o[2] >= 100000]
    assert len(validating) == 2 and all(o[1] == {"ShareUpdateExclusiveLock"} for o in validating), observed

    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        # the column-level grant too (checked before the repeatable grants file runs again: it revokes all), and
        # the statistics ALTER TYPE dropped are back (the migration's ANALYZE)
        assert conn.execute(
            "SELECT has_column_privilege('sigledger_graph', 'sigledger.money_probe', 'cost_usd', 'SELECT'),"
            " has_column_privilege('sigledger_graph', 'sigledger.money_probe', 'priced_usd', 'SELECT')"
        ).fetchone() == (True, False)
        assert conn.execute(
            "SELECT array_agg(attname::text ORDER BY attname) FROM pg_stats WHERE schemaname = 'sigledger'"
            " AND tablename = 'llm_cost_log' AND attname IN ('cost_usd', 'priced_usd')"
        ).fetchone() == (["cost_usd", "priced_usd"],)
    migrator.baseline("8_080")
    migrator.up()
    assert migrator.verify() == []
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        after = dict(
            conn.execute(
                "SELECT c.oid::regclass::text, c.relfilenode FROM pg_class c WHERE c.oid::regclass::text = ANY(%s)",
                (parts,),
            ).fetchall()
        )
        assert after == nodes, "a ledger partition was rewritten"
        probe = conn.execute(
            """SELECT c.reloptions, obj_description(c.oid, 'pg_class'),
                      has_table_privilege('sigledger_readonly', c.oid, 'SELECT'),
                      (SELECT count(*) FROM sigledger.money_probe)
                 FROM pg_class c WHERE c.oid = 'sigledger.money_probe'::regclass"""
        ).fetchone()
        assert probe == (["security_barrier=true"], "probe", True, 100000)
        assert conn.execute(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'sigledger.llm_cost_log'::regclass"
            " AND attname = 'cost_usd'"
        ).fetchone() == (-1,)
        lid = conn.execute(
            "SELECT sigledger.record_cost('exact-1', %s, 'm', 'p', 0, 0, 0.0000001234)", (agent,)
        ).fetchone()
        assert lid is not None
        assert conn.execute("SELECT cost_usd FROM sigledger.llm_cost_log WHERE id = %s", lid).fetchone() == (
            Decimal("0.0000001234"),
        )
