"""A failed concurrent index build leaves an INVALID index; the next run resumes at the failed statement,
drops the INVALID index concurrently and rebuilds it valid."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from sigledger.core.errors import MigrationError
from sigledger.migrate import EXIT_DRIFT

from tests.migrate.helpers import cli, fixture_set, history, index_state, status_json


def _counter(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT n FROM fx.counter").fetchone()
    assert row is not None
    return int(row[0])


def test_failed_unique_build_is_repaired_on_rerun(
    empty_db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx = fixture_set("invalid_index", tmp_path)
    with pytest.raises(MigrationError, match=r"V2__indexes:7: 23505") as failure:
        fx.migrator(empty_db_dsn).up()
    assert failure.value.sqlstate == "23505"

    # The build failed half way: pg_indexes lists the index, only pg_index.indisvalid tells it is INVALID.
    listed, valid, invalid_oid = index_state(empty_db_dsn, "fx", "items_k_key") or (False, True, 0)
    assert listed and not valid
    assert index_state(empty_db_dsn, "fx", "items_id_idx") is not None
    assert _counter(empty_db_dsn) == 1
    [v1, v2] = history(empty_db_dsn)
    assert v1[3] == "applied"
    assert v2[3:6] == ("in_progress", 5, 3)  # status, statements, progress: three statements done
    assert "items_k_key" in (v2[8] or "") or "23505" in (v2[8] or "")

    code, body = status_json(empty_db_dsn, monkeypatch, fx)
    assert code == EXIT_DRIFT and body["in_progress"] == ["V2__indexes"]
    result = cli(["migrate", "status", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == EXIT_DRIFT and "partially applied" in result.output
    result = cli(["migrate", "plan", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.output.splitlines() == ["V2__indexes (non-transactional, resumes at statement 4 of 5)"]

    # Still duplicate: the re-run fails again at the same statement, the earlier ones are not re-run.
    with pytest.raises(MigrationError, match="V2__indexes:7"):
        fx.migrator(empty_db_dsn).up()
    assert _counter(empty_db_dsn) == 1

    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM fx.items WHERE id = 1000")
    log: list[str] = []
    assert fx.migrator(empty_db_dsn, log).up() == ["V2__indexes"]
    assert any("resuming V2__indexes at statement 4 of 5" in line for line in log), log
    assert any("items_k_key is INVALID" in line for line in log), log

    listed, valid, oid = index_state(empty_db_dsn, "fx", "items_k_key") or (False, False, 0)
    assert listed and valid and oid != invalid_oid  # dropped and rebuilt, now valid
    assert _counter(empty_db_dsn) == 101  # statement 1 once, the last statement once
    [_, v2] = history(empty_db_dsn)
    assert v2[3:6] == ("applied", 5, 5) and v2[8] is None
    code, body = status_json(empty_db_dsn, monkeypatch, fx)
    assert code == 0 and body["applied"] == ["V1__items", "V2__indexes"]


def test_cancelled_build_is_repaired(empty_db_dsn: str, tmp_path: Path) -> None:
    """pg_cancel_backend on a concurrent build (it waits behind an open transaction) leaves it INVALID."""
    fx = fixture_set("invalid_index", tmp_path)
    v2 = fx.migrations / "V2__indexes.sql"
    v2.write_text(
        v2.read_text().replace("UNIQUE INDEX CONCURRENTLY items_k_key", "INDEX CONCURRENTLY items_k_key")
    )
    fx.migrator(empty_db_dsn).up(to="1")

    # An open transaction that has written to the table: CREATE INDEX CONCURRENTLY waits for it after
    # creating the (still INVALID) index entry, so we can cancel the build in that state.
    blocker = psycopg.connect(empty_db_dsn)
    blocker.execute("INSERT INTO fx.items (id, k) VALUES (5000, 5000)")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fx.migrator(empty_db_dsn, application_name="fixture-cancel-me").up()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        with psycopg.connect(empty_db_dsn, autocommit=True) as watcher:
            for _ in range(300):
                row = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'fixture-cancel-me' "
                    "AND query LIKE 'CREATE INDEX CONCURRENTLY items_id_idx%%' AND wait_event_type = 'Lock'"
                ).fetchone()
                if row:
                    watcher.execute("SELECT pg_cancel_backend(%s)", (row[0],))
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the concurrent build never waited")
    finally:
        blocker.close()
        thread.join(timeout=120)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], MigrationError)
    assert "57014" in str(errors[0])  # query_canceled
    listed, valid, invalid_oid = index_state(empty_db_dsn, "fx", "items_id_idx") or (False, True, 0)
    assert listed and not valid
    assert index_state(empty_db_dsn, "fx", "items_k_key") is None  # never reached
    assert history(empty_db_dsn)[1][3:6] == ("in_progress", 5, 2)

    log: list[str] = []
    assert fx.migrator(empty_db_dsn, log).up() == ["V2__indexes"]
    assert any("items_id_idx is INVALID" in line for line in log), log
    for name in ("items_id_idx", "items_k_key"):
        listed, valid, oid = index_state(empty_db_dsn, "fx", name) or (False, False, 0)
        assert listed and valid and oid != invalid_oid
    assert _counter(empty_db_dsn) == 101


def test_renamed_partially_applied_file_resumes_its_own_row(empty_db_dsn: str, tmp_path: Path) -> None:
    """V2 and V002 are one version: a file renamed after a failure resumes, it does not start over."""
    fx = fixture_set("invalid_index", tmp_path)
    with pytest.raises(MigrationError, match="V2__indexes:7"):
        fx.migrator(empty_db_dsn).up()
    for suffix in (".sql", ".down.sql"):
        (fx.migrations / f"V2__indexes{suffix}").rename(fx.migrations / f"V002__indexes{suffix}")
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM fx.items WHERE id = 1000")
    assert fx.migrator(empty_db_dsn).plan().lines() == [
        "V002__indexes (non-transactional, resumes at statement 4 of 5)"
    ]
    assert fx.migrator(empty_db_dsn).up() == ["V002__indexes"]
    assert _counter(empty_db_dsn) == 101
    assert [(r[0], r[3], r[5]) for r in history(empty_db_dsn)] == [("1", "applied", 6), ("2", "applied", 5)]
