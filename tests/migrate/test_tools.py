"""A DBA's tools: `migrate history`, `plan --json` and `plan --sql` (the exact SQL: psql runs it to the same
schema), `status` naming a live runner (not "partially applied" while one works), a waiting runner saying
what it waits for, and an orphaned index build (its runner SIGKILLed) waited for instead of rebuilt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
from pytest_postgresql.executors import PostgreSQLExecutor
from sigledger.core.paths import migrations_dir
from sigledger.migrate import ADVISORY_LOCK_KEY, Migrator
from sigledger.migrate.files import discover_migrations

from tests.conftest import clone_database, drop_database, make_dsn
from tests.migrate.dumps import schema_dump
from tests.migrate.helpers import ROOT, cli_process, fixture_set, index_state
from tests.migrate.test_online import wait_until


def test_history_says_what_ran_by_whom_when_how_long_and_at_which_checksum(db_dsn: str) -> None:
    result = cli_process(["migrate", "history", "--json", "--dsn", db_dsn])
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    files = {f"V{m.version}": m for m in discover_migrations(migrations_dir())}
    versioned = [r for r in rows if r["kind"] == "versioned"]
    assert [r["version"] for r in versioned] == list(files)
    for row in versioned:
        assert row["applied_by"] == "postgres" and row["applied_at"] and row["duration_ms"] is not None
        assert row["checksum"] == files[row["version"]].up.checksum and row["file"] == "current"
    assert {r["name"] for r in rows if r["kind"] == "repeatable"} >= {
        "900_grants.sql",
        "010_agent_version.sql",
    }
    text = cli_process(["migrate", "history", "--dsn", db_dsn])
    first = files["V3_000"].up.checksum[:12]
    assert any(
        line.startswith("V3_000") and first in line and "current" in line for line in text.stdout.splitlines()
    )


def test_plan_sql_is_the_exact_sql_and_plan_json_its_steps(pg: PostgreSQLExecutor, empty_db_dsn: str) -> None:
    plan = cli_process(["migrate", "plan", "--json", "--dsn", empty_db_dsn])
    assert plan.returncode == 0, plan.stderr
    body = json.loads(plan.stdout)
    assert body["preflight"]["blocked"] is False
    kinds = [s["kind"] for s in body["steps"]]
    assert kinds[0] == "runner" and kinds.count("migration") == len(discover_migrations(migrations_dir()))
    assert [s["name"] for s in body["steps"] if s["kind"] == "repair"] == [
        "R001__ledger_out_of_range.sql",
        "R002__aliases.sql",
        "R002__aliases.sql",
        "R003__entity_tombstones.sql",
    ]
    script = cli_process(["migrate", "plan", "--sql", "--dsn", empty_db_dsn])
    assert script.returncode == 0, script.stderr
    # psql runs it as it stands, and it builds what `up` builds
    by_hand = clone_database(pg, "template0", prefix="byhand")
    try:
        dsn = make_dsn(pg, by_hand)
        ran = subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn],
            input=script.stdout,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert ran.returncode == 0, ran.stderr[-2000:]
        Migrator(empty_db_dsn).up()
        assert schema_dump(dsn) == schema_dump(empty_db_dsn)
    finally:
        drop_database(pg, by_hand)


def test_status_names_a_live_runner_and_a_waiting_runner_says_what_it_waits_for(
    empty_db_dsn: str, tmp_path: Path
) -> None:
    fx = fixture_set("busy_table", tmp_path)
    fx.migrator(empty_db_dsn).up(to="2")
    logs: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def run(name: str, **settings: object) -> threading.Thread:
        def body() -> None:
            try:
                fx.migrator(empty_db_dsn, logs[name], **settings).up()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        return thread

    with psycopg.connect(empty_db_dsn, autocommit=True) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT * FROM fx.busy")  # ACCESS SHARE: V3's ALTER TABLE waits for it
        a = run("a", lock_timeout="60s")
        wait_until("runner a waiting on fx.busy", lambda: any("held by pid" in line for line in logs["a"]))
        assert f"held by pid {reader.info.backend_pid}" in next(
            line for line in logs["a"] if "held by pid" in line
        )
        status = fx.migrator(empty_db_dsn).status()
        assert status.in_progress == ["V3__index_busy"] and status.runner is not None
        assert status.exit_code == 3  # being applied, not abandoned
        b = run("b", runner_wait=120)
        wait_until("runner b saying whom it waits for", lambda: bool(logs["b"]))
        assert logs["b"][0].startswith(f"waiting for another migration runner (pid {status.runner['pid']}")
        reader.execute("COMMIT")
        a.join(timeout=120)
        b.join(timeout=120)
    assert not errors, errors
    assert fx.migrator(empty_db_dsn).status().exit_code == 0


def test_an_orphaned_index_build_is_waited_for_not_rebuilt(empty_db_dsn: str, tmp_path: Path) -> None:
    """A runner SIGKILLed during CREATE INDEX CONCURRENTLY leaves its backend building; the next runner
    recognises that build (pg_stat_progress_create_index), waits for it, and keeps the index it made."""
    fx = fixture_set("invalid_index", tmp_path)
    v2 = fx.migrations / "V2__indexes.sql"
    v2.write_text(
        v2.read_text().replace("UNIQUE INDEX CONCURRENTLY items_k_key", "INDEX CONCURRENTLY items_k_key")
    )
    fx.migrator(empty_db_dsn).up(to="1")
    script = (
        "from pathlib import Path\nfrom sigledger.migrate import Migrator\n"
        f"Migrator({empty_db_dsn!r}, migrations=Path({str(fx.migrations)!r}), "
        f"functions=Path({str(fx.functions)!r})).up()\n"
    )
    with (
        psycopg.connect(empty_db_dsn, autocommit=True) as blocker,
        psycopg.connect(empty_db_dsn, autocommit=True) as watch,
    ):
        # an open writing transaction: the concurrent build waits for it after creating its INVALID entry
        blocker.execute("BEGIN")
        blocker.execute("INSERT INTO fx.items (id, k) VALUES (5000, 5000)")
        first = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "harness"), str(ROOT)])},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(
                "the first runner's build waiting", lambda: _building(watch, "items_id_idx") is not None
            )
            builder, oid = _building(watch, "items_id_idx")  # type: ignore[misc]
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=60)
        wait_until("the killed runner's lock released", lambda: not _runner_lock_held(watch))
        assert _building(watch, "items_id_idx") == (builder, oid)  # its backend builds on

        log: list[str] = []
        errors: list[BaseException] = []

        def second() -> None:
            try:
                fx.migrator(empty_db_dsn, log).up()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        wait_until("the second runner recognising the build", lambda: any("being built by" in x for x in log))
        assert f"being built by pid {builder}" in next(x for x in log if "being built by" in x)
        blocker.execute("COMMIT")
        thread.join(timeout=300)
    assert not thread.is_alive() and not errors, errors
    assert any("items_id_idx exists and is valid: kept" in line for line in log), log
    assert not any("items_id_idx is INVALID" in line for line in log), log
    listed, valid, final_oid = index_state(empty_db_dsn, "fx", "items_id_idx") or (False, False, 0)
    assert listed and valid and final_oid == oid  # the orphan's index, not a rebuild


def _building(conn: psycopg.Connection, index: str) -> tuple[int, int] | None:
    row = conn.execute(
        "SELECT p.pid, p.index_relid::bigint FROM pg_stat_progress_create_index p "
        "JOIN pg_class c ON c.oid = p.index_relid WHERE c.relname = %s",
        (index,),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else None


def _runner_lock_held(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = (%s::bigint >> 32)::oid AND objid = (%s::bigint & 4294967295)::oid",
        (ADVISORY_LOCK_KEY, ADVISORY_LOCK_KEY),
    ).fetchone()
    return bool(row and row[0])
