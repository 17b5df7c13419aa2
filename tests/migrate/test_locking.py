"""Runners against each other and against application traffic: the advisory runner lock, 10 runners at once
(real processes), and lock_timeout retries on a busy table."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from sigledger.core.errors import MigrationError
from sigledger.core.paths import functions_dir, migrations_dir
from sigledger.migrate import ADVISORY_LOCK_KEY
from sigledger.migrate.files import discover_migrations, discover_repeatables

from tests.migrate.helpers import ROOT, cli_process, fixture_set, history

RUNNERS = 10


def test_ten_runners_at_once_apply_every_migration_exactly_once(empty_db_dsn: str, tmp_path: Path) -> None:
    migrations = discover_migrations(migrations_dir())
    repeatables = discover_repeatables(functions_dir())
    go = tmp_path / "go"
    # Each process imports everything, then waits for the same file so they all start the run together.
    script = (
        "import pathlib, sys, time\n"
        "from sigledger.cli import main\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
        f"sys.argv = ['sigledger', 'migrate', 'up', '--dsn', {empty_db_dsn!r}]\n"
        "main()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(RUNNERS)
    ]
    time.sleep(1.0)  # let them import (not an assertion: a late starter only waits for the lock longer)
    go.touch()
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"

    # Every migration and repeatable was applied by exactly one runner; the others found nothing to do.
    applying = [
        line.split()[1]
        for out, _ in outputs
        for line in out.splitlines()
        if line.startswith("applying ") and not line.startswith("applying repeatable")
    ]
    assert sorted(applying) == sorted(m.label for m in migrations)
    rep_lines = [
        line for out, _ in outputs for line in out.splitlines() if line.startswith("applying repeatable")
    ]
    assert sorted(rep_lines) == sorted(f"applying repeatable {r.name}" for r in repeatables)
    assert sum("nothing to do" in out for out, _ in outputs) == RUNNERS - 1

    rows = history(empty_db_dsn)
    assert [r[0] for r in rows] == [m.version for m in migrations]
    assert all(r[3] == "applied" and r[5] == r[4] for r in rows)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        reps = conn.execute("SELECT name FROM sigledger_meta.repeatable_history ORDER BY name").fetchall()
        assert [r[0] for r in reps] == [r.name for r in repeatables]
        # No duplicate objects: each of V3_008's indexes exists once and is valid.
        idx = conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relnamespace = 'sigledger'::regnamespace AND c.relname LIKE 'idx\\_%%' ORDER BY 1"
        ).fetchall()
        names = [r[0] for r in idx]
        assert len(names) == len(set(names))
        assert {
            "idx_signal_entities_entity_id",
            "idx_signal_entities_signal_id",
            "idx_entity_aliases_canonical_id",
            "idx_entity_aliases_alias_name",
        } <= set(names)
        assert all(valid for _, valid in idx)
        triggers = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'trg_increment_agent_version'"
        ).fetchone()
        assert triggers == (1,)


def test_runner_lock_timeout_names_the_holder(empty_db_dsn: str) -> None:
    with psycopg.connect(empty_db_dsn, autocommit=True, application_name="holder-of-the-lock") as holder:
        pid = holder.info.backend_pid
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        result = cli_process(["migrate", "--runner-wait", "0.5", "up", "--dsn", empty_db_dsn])
        assert result.returncode == 1, result.stdout + result.stderr
        assert "another migration runner holds the lock" in result.stderr
        assert f"pid {pid}" in result.stderr and "holder-of-the-lock" in result.stderr
        assert "Traceback" not in result.stderr
        assert history(empty_db_dsn) == []  # nothing ran, not even the history schema

        # A runner that waits long enough proceeds once the holder lets go.
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sigledger",
                "migrate",
                "--runner-wait",
                "300",
                "up",
                "--dsn",
                empty_db_dsn,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for _ in range(600):  # wait until it is polling
                row = holder.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sigledger-migrate'"
                ).fetchone()
                if row and row[0] >= 2:  # its main and its lock connection
                    break
                time.sleep(0.05)
            assert history(empty_db_dsn) == []
            holder.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, out + err
    assert len(history(empty_db_dsn)) == len(discover_migrations(migrations_dir()))


@pytest.mark.parametrize(("target", "label"), [("2", "V2__alter_busy"), ("3", "V3__index_busy")])
def test_lock_timeout_is_retried_until_the_blocker_commits(
    empty_db_dsn: str, tmp_path: Path, target: str, label: str
) -> None:
    fx = fixture_set("busy_table", tmp_path)
    fx.migrator(empty_db_dsn).up(to=str(int(target) - 1))
    blocker = psycopg.connect(empty_db_dsn)
    blocker.execute("SELECT count(*) FROM fx.busy")  # holds ACCESS SHARE until it commits
    retried = threading.Event()
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "lock timeout, retry" in line:
            retried.set()

    def release() -> None:
        retried.wait(timeout=300)
        blocker.commit()

    thread = threading.Thread(target=release)
    thread.start()
    try:
        migrator = fx.migrator(
            empty_db_dsn, lock_timeout="100ms", retries=50, retry_base_delay=0.05, runner_wait=60
        )
        migrator.log = log
        assert migrator.up(to=target) == [label]
    finally:
        retried.set()
        thread.join(timeout=60)
        blocker.close()
    assert any(re.search(rf"{label}.*lock timeout, retry 1/50", line) for line in lines), lines
    column = "note" if target == "2" else "extra"
    with psycopg.connect(empty_db_dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'fx.busy'::regclass AND attname = %s",
            (column,),
        ).fetchone() == (1,)
    assert history(empty_db_dsn)[-1][3] == "applied"


def test_lock_timeout_retries_exhausted_applies_nothing(empty_db_dsn: str, tmp_path: Path) -> None:
    fx = fixture_set("busy_table", tmp_path)
    fx.migrator(empty_db_dsn).up(to="1")
    lines: list[str] = []
    with psycopg.connect(empty_db_dsn) as blocker:
        blocker.execute("SELECT count(*) FROM fx.busy")
        migrator = fx.migrator(empty_db_dsn, lines, lock_timeout="50ms", retries=2, retry_base_delay=0.01)
        with pytest.raises(MigrationError, match=r"V2__alter_busy: gave up after 3 lock timeouts") as failure:
            migrator.up()
        blocker.rollback()
    assert "lock_timeout" in str(failure.value) or "lock timeout" in str(failure.value)
    assert sum("lock timeout, retry" in line for line in lines) == 2
    assert [r[0] for r in history(empty_db_dsn)] == ["1"]  # V2 left no history row, V3 never started
    with psycopg.connect(empty_db_dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'fx.busy'::regclass AND attnum > 0 "
            "AND NOT attisdropped"
        ).fetchone() == (1,)
