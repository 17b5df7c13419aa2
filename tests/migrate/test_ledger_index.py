"""V8_101 replaces the ledger's index on created_at by one on (created_at, id), online: the parent index ON ONLY,
each partition's built CONCURRENTLY and attached (a \\gexec query lists them: the partitions differ from database
to database), then the old one dropped under a moment's lock. On a database holding rows in the legacy, DEFAULT and
monthly partitions; and after a run that failed half way (a build left INVALID, a partition created meanwhile by
the sweep), a second run repairs it. Why the index: tests/core/test_index_plans.py (a replay's lookups)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sigledger.core.errors import MigrationError
from sigledger.core.paths import migrations_dir
from sigledger.migrate import Migrator, Settings
from sigledger.migrate.files import discover_migrations

from tests.migrate.dumps import raw_schema_dump, schema_dump
from tests.migrate.helpers import cli_process, history

V8_101 = "V8_101__ledger_created_at_id"
# what `up` runs from V8_100: V8_101 and the versions after it, then the repeatable that always runs
_MIGRATIONS = discover_migrations(migrations_dir())
_LABELS = [m.label for m in _MIGRATIONS]
UP_FROM_V8_100 = [*_LABELS[_LABELS.index(V8_101) :], "repeatable 900_grants.sql"]
# the line of V8_101's \gexec query (the partitions' builds), which the runner's messages name
GEXEC_LINE = next(s.line for m in _MIGRATIONS if m.label == V8_101 for s in m.up.statements if s.gexec)
AGENT = "00000000-0000-0000-0000-0000000000d1"


def at_v8_100_with_rows_in_every_kind_of_partition(dsn: str) -> dict[str, int]:
    """The template rolled back to V8_100 (V8_101's down file), its ledger rearranged as a database that ran for
    months: the legacy partition ends two months back, the previous month has no partition (its rows sit in
    DEFAULT, as when nothing ran the sweep for a while), the current month has its monthly partition (made by
    _ensure_ledger_partitions). 100 rows in each of the three. Returns the rows per partition."""
    result = cli_process(["migrate", "down", "--to", "V8_100", "--dsn", dsn])
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO sigledger.agent_registry (id, name) VALUES (%s, 'index swap')", (AGENT,))
        insert = (
            "INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd, created_at)"
            " SELECT %s || g, %s, 'm', 'p', 0.001, {} FROM generate_series(1, 100) g"
        )
        conn.execute(insert.format("now() - interval '100 days'"), ("legacy-", AGENT))
        conn.execute(
            """DO $$
            DECLARE
                v_cutoff timestamptz := (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '2 months')
                                        AT TIME ZONE 'UTC';
            BEGIN
                ALTER TABLE sigledger.llm_cost_log DETACH PARTITION sigledger.llm_cost_log_legacy;
                ALTER TABLE sigledger.llm_cost_log_legacy DROP CONSTRAINT llm_cost_log_legacy_range;
                EXECUTE format('ALTER TABLE sigledger.llm_cost_log_legacy ADD CONSTRAINT llm_cost_log_legacy_range '
                               'CHECK (created_at < %L)', v_cutoff);
                EXECUTE format('ALTER TABLE sigledger.llm_cost_log ATTACH PARTITION sigledger.llm_cost_log_legacy '
                               'FOR VALUES FROM (MINVALUE) TO (%L)', v_cutoff);
                IF sigledger._ensure_ledger_partitions(0) <> 1 THEN
                    RAISE EXCEPTION 'expected the partition of the current month';
                END IF;
            END
            $$"""
        )
        previous = "(date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month' + interval '1 day') AT TIME ZONE 'UTC'"
        conn.execute(insert.format(previous), ("default-", AGENT))
        conn.execute(insert.format("now()"), ("monthly-", AGENT))
        return rows_per_partition(conn)


def rows_per_partition(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT tableoid::regclass::text, count(*) FROM sigledger.llm_cost_log GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return {str(r[0]).removeprefix("sigledger."): int(r[1]) for r in rows}


def ledger_indexes(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[str, str | None, bool]]]:
    """Per partition of the ledger: its indexes on created_at (name, the parent index it is attached to,
    valid), and the parent's under the key ''."""
    rows = conn.execute(
        """SELECT coalesce(nullif(t.relname, 'llm_cost_log'), ''), c.relname,
                  (SELECT p.relname FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhparent WHERE h.inhrelid = c.oid),
                  x.indisvalid, pg_get_indexdef(c.oid)
             FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
            WHERE (t.oid = 'sigledger.llm_cost_log'::regclass
                   OR t.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'sigledger.llm_cost_log'::regclass))
              AND pg_get_indexdef(c.oid) ~ 'btree \\(created_at[,)]'
            ORDER BY 1, 2"""
    ).fetchall()
    out: dict[str, list[tuple[str, str | None, bool]]] = {}
    for table, index, parent, valid, definition in rows:
        columns = definition[definition.index("(") :]
        out.setdefault(table, []).append((f"{index} {columns}", parent, bool(valid)))
    return out


def swapped(conn: psycopg.Connection[Any]) -> None:
    """Every partition has its (created_at, id) index, attached and valid, and no index on created_at alone."""
    indexes = ledger_indexes(conn)
    partitions = [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass ORDER BY 1"
        ).fetchall()
    ]
    assert indexes == {
        "": [("llm_cost_log_created_at_id_idx (created_at, id)", None, True)],
        **{
            p: [(f"{p}_created_at_id_idx (created_at, id)", "llm_cost_log_created_at_id_idx", True)]
            for p in partitions
        },
    }


def verified(dsn: str) -> None:
    result = cli_process(["migrate", "verify", "--dsn", dsn])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_index_swap_on_a_ledger_with_rows_in_every_kind_of_partition(db_dsn: str) -> None:
    rows = at_v8_100_with_rows_in_every_kind_of_partition(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        current = conn.execute(
            "SELECT 'llm_cost_log_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')"
        ).fetchone()[0]  # type: ignore[index]
        assert rows == {"llm_cost_log_default": 100, "llm_cost_log_legacy": 100, current: 100}
        before = ledger_indexes(conn)
    # the rollback restored the index on created_at alone, each partition's under its former name
    assert before[""] == [("llm_cost_log_created_at_idx (created_at)", None, True)]
    assert before["llm_cost_log_legacy"] == [
        ("llm_cost_log_legacy_created_at_idx (created_at)", "llm_cost_log_created_at_idx", True)
    ]
    assert before[current] == [
        (f"{current}_created_at_idx (created_at)", "llm_cost_log_created_at_idx", True)
    ]
    dump = raw_schema_dump(db_dsn)

    log: list[str] = []
    assert Migrator(db_dsn, log=log.append).up() == UP_FROM_V8_100
    assert any(f"{V8_101}:{GEXEC_LINE}: \\gexec: 13 statement(s)" in line for line in log), (
        log
    )  # 6 partitions, the check
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        swapped(conn)
        assert rows_per_partition(conn) == rows
    verified(db_dsn)
    after = raw_schema_dump(db_dsn)

    # down and up again: the same schemas
    result = cli_process(["migrate", "down", "--to", "V8_100", "--dsn", db_dsn])
    assert result.returncode == 0, result.stdout + result.stderr
    assert raw_schema_dump(db_dsn) == dump
    assert Migrator(db_dsn).up() == UP_FROM_V8_100
    assert raw_schema_dump(db_dsn) == after
    verified(db_dsn)


def half_failed_up(db_dsn: str) -> dict[str, int]:
    """V8_101 run on the rearranged ledger until the concurrent build on the DEFAULT partition times out (57014),
    an application transaction holding a row of it open. Returns the rows per partition."""
    rows = at_v8_100_with_rows_in_every_kind_of_partition(db_dsn)
    blocker = psycopg.connect(db_dsn)

    def before_step(where: str) -> None:
        # once the parent index exists (step 1 done): an application transaction that writes a row of the DEFAULT
        # partition and stays open, so the concurrent build there waits for it, and times out (57014)
        if where == f"{V8_101}:4":
            blocker.execute(
                "INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd, created_at)"
                " VALUES ('blocker', %s, 'm', 'p', 0.001, (date_trunc('month', now() AT TIME ZONE 'UTC')"
                " - interval '1 month' + interval '2 days') AT TIME ZONE 'UTC')",
                (AGENT,),
            )

    runner = Migrator(db_dsn, settings=Settings(concurrent_statement_timeout="1s", before_step=before_step))
    try:
        with pytest.raises(
            MigrationError,
            match=rf"{V8_101}:{GEXEC_LINE}: 57014: .* \[\\gexec statement \(1/13\) CREATE INDEX CONCURRENTLY "
            "llm_cost_log_default_created_at_id_idx ",
        ) as failure:
            runner.up()
    finally:
        blocker.rollback()
        blocker.close()
    assert failure.value.sqlstate == "57014"
    [v8_101] = [r for r in history(db_dsn) if r[1] == "ledger_created_at_id"]
    assert v8_101[3:6] == ("in_progress", 11, 4)  # the parent index made, the partitions' not
    return rows


def test_a_half_failed_index_swap_is_repaired_by_running_it_again(db_dsn: str) -> None:
    rows = half_failed_up(db_dsn)

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        half = ledger_indexes(conn)
        # the failed build left an INVALID index on the DEFAULT partition, attached to nothing; the old index
        # still serves every partition (the application reads and writes as before)
        assert ("llm_cost_log_default_created_at_id_idx (created_at, id)", None, False) in half[
            "llm_cost_log_default"
        ]
        assert ("llm_cost_log_created_at_id_idx (created_at, id)", None, False) in half[""]
        assert ("llm_cost_log_created_at_idx (created_at)", None, True) in half[""]
        # (record_cost: the functions in place are this release's, whose record_costs names V8_103's column,
        # rolled back with the rest; during a real upgrade the previous release's functions run here)
        assert conn.execute(
            "SELECT sigledger.record_cost('meanwhile', %s, 'm', 'p', 0, 0, 0.001) > 0", (AGENT,)
        ).fetchone() == (True,)
        # the sweep creates partitions meanwhile: they get the new index at once, attached
        assert conn.execute("SELECT sigledger.ensure_ledger_partitions(6)").fetchone()[0] >= 1  # type: ignore[index]
        newest = conn.execute(
            "SELECT max(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass"
        ).fetchone()[0]  # type: ignore[index]
        assert (
            f"{newest}_created_at_id_idx (created_at, id)",
            "llm_cost_log_created_at_id_idx",
            True,
        ) in ledger_indexes(conn)[newest]

    log: list[str] = []
    assert Migrator(db_dsn, log=log.append).up() == UP_FROM_V8_100
    assert any(f"resuming {V8_101} at statement 5 of 11" in line for line in log), log
    assert any("llm_cost_log_default_created_at_id_idx is INVALID" in line for line in log), log
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        swapped(conn)
        current = conn.execute(
            "SELECT 'llm_cost_log_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')"
        ).fetchone()[0]  # type: ignore[index]
        assert rows_per_partition(conn) == {
            **rows,
            current: rows[current] + 1,
        }  # and the row recorded meanwhile
    verified(db_dsn)
    # every monthly partition alike: those of V4_004, of the sweep before and during the migration
    assert schema_dump(db_dsn).count("-- the objects of a monthly partition:") == 1


def test_a_half_failed_index_swap_rolled_back_leaves_no_index_behind(db_dsn: str) -> None:
    """The review's case: V8_101 failed half way, then rolled back instead of resumed. The DEFAULT partition's
    INVALID index, attached to nothing, is not dropped with the parent index; the down file's last step drops
    such leftovers, so verify is clean (before: `migrate verify` reported the INVALID index)."""
    half_failed_up(db_dsn)
    result = cli_process(["migrate", "down", "--to", "V8_100", "--dsn", db_dsn])
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        left = conn.execute(
            "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
            " WHERE c.relnamespace = 'sigledger'::regnamespace AND c.relname LIKE '%%\\_created\\_at\\_id\\_idx'"
        ).fetchall()
    assert left == []
    assert Migrator(db_dsn).verify() == []
    # and up again from there
    assert Migrator(db_dsn).up() == UP_FROM_V8_100
    verified(db_dsn)
