"""V8_021 is online: it keys the existing aliases while applications keep inserting them. The interleaving that
matters (the migration's comment, step 3): an alias left unkeyed by the first pass, and a new alias with the
same resolution key that a session inserts (keyed by the trigger) while the second pass runs. The unique index
entry orders them: the migration's UPDATE waits for the inserting transaction, then finds the key taken; the
leftover alias is moved to the conflict report, never dropped, and the migration does not fail."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import psycopg
from sigledger.core.paths import migrations_dir
from sigledger.migrate import Migrator
from sigledger.migrate.files import SqlFile

V8_021 = migrations_dir() / "V8_021__alias_keys.sql"


def _wait_until_blocked(conn: psycopg.Connection, pid: int, seconds: float = 30) -> None:
    """Wait for a condition (the backend waits on a lock), not for a duration."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.05)
    raise AssertionError(f"backend {pid} never waited on a lock")


def test_second_pass_waits_for_a_concurrent_insert_then_reports_the_leftover(
    empty_db_dsn: str, tmp_path: Path
) -> None:
    # the schema up to V8_020, then V8_021's statements up to the trigger (its passes are run by hand below)
    upto = tmp_path / "migrations"
    upto.mkdir()
    for path in migrations_dir().glob("*.sql"):
        if path.name < "V8_021":
            shutil.copy(path, upto / path.name)
    Migrator(empty_db_dsn, migrations=upto, functions=tmp_path / "none").up()
    statements = [s.sql for s in SqlFile(V8_021).statements]
    setup = [s for s in statements if not s.lstrip().upper().startswith(("CALL", "DROP", "ALTER", "DO"))]
    assert any("CREATE TRIGGER entity_aliases_set_key" in s for s in setup)

    with psycopg.connect(empty_db_dsn, autocommit=True) as admin:
        entity = admin.execute(
            "INSERT INTO sigledger.entities (name) VALUES ('Old') RETURNING id"
        ).fetchone()[0]
        # inserted by an old function while the first pass ran: unkeyed
        admin.execute(
            "INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id) VALUES ('Straße', %s)",
            (entity,),
        )
        admin.execute("SET ROLE sigledger_owner")
        for stmt in setup:
            admin.execute(stmt)
        admin.execute("RESET ROLE")
        other = admin.execute("INSERT INTO sigledger.entities (name) VALUES ('New') RETURNING id").fetchone()[
            0
        ]

        with (
            psycopg.connect(empty_db_dsn) as inserter,
            psycopg.connect(empty_db_dsn, autocommit=True) as runner,
        ):
            # a session inserts an alias with the same key; the trigger keys it; not committed yet
            inserter.execute(
                "INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id) VALUES ('STRASSE', %s)",
                (other,),
            )
            runner_pid = runner.execute("SELECT pg_backend_pid()").fetchone()[0]
            errors: list[BaseException] = []

            def second_pass() -> None:
                try:
                    runner.execute("SET ROLE sigledger_owner")
                    runner.execute("CALL sigledger._v8_021_key_aliases()")
                except BaseException as exc:  # reported by the assertion below
                    errors.append(exc)

            thread = threading.Thread(target=second_pass)
            thread.start()
            try:
                _wait_until_blocked(admin, runner_pid)  # the UPDATE waits on the inserter's index entry
            finally:
                inserter.commit()
                thread.join(60)
            assert not thread.is_alive() and errors == [], errors

        rows = admin.execute(
            "SELECT alias, sqlstate, holder_alias FROM sigledger.entity_alias_conflicts"
        ).fetchall()
        assert rows == [("Straße", "23505", "STRASSE")]
        kept = admin.execute("SELECT alias, alias_key FROM sigledger.entity_aliases").fetchall()
        assert kept == [("STRASSE", "strasse")]
