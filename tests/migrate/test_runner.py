"""The runner on a fixture migration set, through the Python API and the CLI: order, --to, repeatables,
baseline, status and its exit codes, drift, a database ahead of the code, plan, verify, refusals."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sigledger.core.errors import MigrationError
from sigledger.migrate import EXIT_DRIFT, EXIT_OK, EXIT_PENDING

from tests.migrate.helpers import FixtureSet, applied_log, cli, fixture_set, history, snapshot, status_json

ALL = ["V1__schema", "V3_9__nine", "V3_010__ten", "V10__major"]
REPEATABLES = ["010_first.sql", "020_second.sql"]


@pytest.fixture
def fx(tmp_path: Path) -> FixtureSet:
    return fixture_set("basic", tmp_path)


def test_up_applies_in_numeric_order_then_repeatables_once(empty_db_dsn: str, fx: FixtureSet) -> None:
    ran = fx.migrator(empty_db_dsn).up()
    assert ran == [*ALL, *(f"repeatable {r}" for r in REPEATABLES)]
    assert applied_log(empty_db_dsn) == ["V1", "V3_9", "V3_010", "V10", "rep:010_first", "rep:020_second"]
    rows = history(empty_db_dsn)
    assert [r[0] for r in rows] == ["1", "3_9", "3_010", "10"]
    assert all(r[2] == "versioned" and r[3] == "applied" and r[4] == r[5] for r in rows)
    # A second run does nothing at all: no migration, no repeatable.
    assert fx.migrator(empty_db_dsn).up() == []
    assert len(applied_log(empty_db_dsn)) == 6
    with psycopg.connect(empty_db_dsn) as conn:
        assert conn.execute("SELECT fx.second()").fetchone() == (2,)
        row = conn.execute(
            "SELECT applied_by = session_user, client_host IS NOT NULL, duration_ms IS NOT NULL "
            "FROM sigledger_meta.schema_history WHERE version = '3_010'"
        ).fetchone()
        assert row == (True, True, True)


def test_changed_repeatable_is_reapplied_alone(empty_db_dsn: str, fx: FixtureSet) -> None:
    fx.migrator(empty_db_dsn).up()
    path = fx.functions / "020_second.sql"
    path.write_text(path.read_text().replace("+ 1", "+ 2"))
    assert fx.migrator(empty_db_dsn).status().repeatables_pending == ["020_second.sql"]
    assert fx.migrator(empty_db_dsn).up() == ["repeatable 020_second.sql"]
    with psycopg.connect(empty_db_dsn) as conn:
        assert conn.execute("SELECT fx.second()").fetchone() == (3,)
    assert applied_log(empty_db_dsn).count("rep:020_second") == 2
    assert applied_log(empty_db_dsn).count("rep:010_first") == 1


def test_up_to_stops_there_and_defers_repeatables(
    empty_db_dsn: str, fx: FixtureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = cli(["migrate", "up", "--to", "V3_9", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 0, result.output
    assert [r[0] for r in history(empty_db_dsn)] == ["1", "3_9"]
    assert applied_log(empty_db_dsn) == ["V1", "V3_9"]  # no repeatable before head
    code, body = status_json(empty_db_dsn, monkeypatch, fx)
    assert code == EXIT_PENDING
    assert body["current"] == "V3_9" and body["pending"] == ["V3_010__ten", "V10__major"]
    assert body["repeatables_pending"] == REPEATABLES
    # --to an unknown version is refused before anything runs.
    result = cli(["migrate", "up", "--to", "V7", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 1 and "V7: no such migration" in result.output
    assert [r[0] for r in history(empty_db_dsn)] == ["1", "3_9"]
    result = cli(["migrate", "up", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 0, result.output
    assert applied_log(empty_db_dsn) == ["V1", "V3_9", "V3_010", "V10", "rep:010_first", "rep:020_second"]


def test_status_json_shape_and_exit_codes(
    empty_db_dsn: str, fx: FixtureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, body = status_json(empty_db_dsn, monkeypatch, fx)
    assert code == EXIT_PENDING
    assert body == {
        "current": None,
        "head": "V10",
        "applied": [],
        "pending": ALL,
        "drifted": [],
        "unknown": [],
        "in_progress": [],
        "repeatables_pending": REPEATABLES,
        "out_of_order": [],
        "superseded": [],
        "runner": None,
        "exit_code": EXIT_PENDING,
    }
    assert cli(["migrate", "up", "--dsn", empty_db_dsn], monkeypatch, fx).exit_code == 0
    code, body = status_json(empty_db_dsn, monkeypatch, fx)
    assert code == EXIT_OK and body["exit_code"] == EXIT_OK
    assert body["applied"] == ALL and body["current"] == "V10" and body["pending"] == []
    text = cli(["migrate", "status", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert text.exit_code == EXIT_OK and "status: up to date" in text.output


def test_edited_applied_migration_is_drift(
    empty_db_dsn: str, fx: FixtureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx.migrator(empty_db_dsn).up(to="3_010")
    path = fx.migrations / "V3_9__nine.sql"
    original = path.read_text()

    # Line endings only: not drift.
    path.write_bytes(original.replace("\n", "\r\n").encode())
    assert status_json(empty_db_dsn, monkeypatch, fx)[1]["drifted"] == []

    path.write_text(original.replace("id int PRIMARY KEY", "id bigint PRIMARY KEY"))
    code, body = status_json(empty_db_dsn, monkeypatch, fx)
    assert code == EXIT_DRIFT and body["drifted"] == ["V3_9__nine"] and body["exit_code"] == EXIT_DRIFT
    before = snapshot(empty_db_dsn)
    result = cli(["migrate", "up", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 1
    assert "V3_9__nine" in result.output and "changed since they ran" in result.output
    result = cli(["migrate", "plan", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 1 and "V3_9__nine" in result.output
    assert snapshot(empty_db_dsn) == before  # V10 stayed pending, no repeatable ran
    assert "V10" not in applied_log(empty_db_dsn)

    path.write_text(original)  # restored: runs again
    assert fx.migrator(empty_db_dsn).up()[0] == "V10__major"


def test_plan_lists_steps_and_changes_nothing(
    empty_db_dsn: str, fx: FixtureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(empty_db_dsn)
    result = cli(["migrate", "plan", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "V1__schema (transactional, 3 statements)",
        "V3_9__nine (transactional, 2 statements)",
        "V3_010__ten (transactional, 3 statements)",
        "V10__major (transactional, 2 statements)",
        "repeatable 010_first.sql",
        "repeatable 020_second.sql",
    ]
    assert snapshot(empty_db_dsn) == before  # not even the history schema was created

    fx.migrator(empty_db_dsn).up(to="3_9")
    before = snapshot(empty_db_dsn)
    result = cli(["migrate", "plan", "--to", "V3_010", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.output.splitlines() == ["V3_010__ten (transactional, 3 statements)"]
    assert snapshot(empty_db_dsn) == before


def test_database_ahead_of_the_code_is_refused(
    empty_db_dsn: str, fx: FixtureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = fx.migrations / "V11__newer.sql"
    newer.write_text("INSERT INTO fx.applied_log (what) VALUES ('V11');\n")
    fx.migrator(empty_db_dsn).up()
    newer.unlink()  # this release does not know V11
    (fx.functions / "030_third.sql").write_text("SELECT 1;\n")
    before = snapshot(empty_db_dsn)
    with pytest.raises(MigrationError, match=r"database is ahead of this code: .*V11__newer"):
        fx.migrator(empty_db_dsn).up()
    code, body = status_json(empty_db_dsn, monkeypatch, fx)
    assert code == EXIT_DRIFT and body["unknown"] == ["V11__newer"]
    result = cli(["migrate", "up", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 1 and "V11__newer" in result.output
    result = cli(["migrate", "baseline", "V10", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 1 and "V11__newer" in result.output
    result = cli(["migrate", "down", "--to", "V1", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 1 and "V11__newer" in result.output
    assert snapshot(empty_db_dsn) == before  # the new repeatable did not run either


def test_baseline_marks_without_running(
    empty_db_dsn: str, fx: FixtureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An existing database that already has part of what V1 and V3_9 create: baseline runs the verify
    # scripts of what it marks (V3_9's wants its log row) and refuses, naming the failing check.
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA fx; CREATE TABLE fx.applied_log (what text NOT NULL, "
            "at timestamptz NOT NULL DEFAULT clock_timestamp()); CREATE TABLE fx.t9 (id int PRIMARY KEY)"
        )
    result = cli(["migrate", "baseline", "V3_9", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert (
        result.exit_code == 1 and "V3_9__nine.verify.sql:2: returned [('V3_9 not logged',)]" in result.output
    )
    assert history(empty_db_dsn) == []
    # ... and with all of it in place, marks without running anything.
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO fx.applied_log (what) VALUES ('V3_9')")
    result = cli(["migrate", "baseline", "V3_9", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 0 and "marked 2 migration(s)" in result.output
    assert [(r[0], r[2], r[3]) for r in history(empty_db_dsn)] == [
        ("1", "baseline", "applied"),
        ("3_9", "baseline", "applied"),
    ]
    assert applied_log(empty_db_dsn) == ["V3_9"]  # nothing ran
    code, body = status_json(empty_db_dsn, monkeypatch, fx)
    assert code == EXIT_PENDING and body["current"] == "V3_9"
    assert fx.migrator(empty_db_dsn).up()[:2] == ["V3_010__ten", "V10__major"]
    assert applied_log(empty_db_dsn) == ["V3_9", "V3_010", "V10", "rep:010_first", "rep:020_second"]
    result = cli(["migrate", "baseline", "V99", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 1 and "no such migration" in result.output


def test_verify_reports_a_failing_verify_script(
    empty_db_dsn: str, fx: FixtureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx.migrator(empty_db_dsn).up()
    result = cli(["migrate", "verify", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 0 and "verified" in result.output
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM fx.applied_log WHERE what = 'V3_9'")
    result = cli(["migrate", "verify", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == 4  # exit_codes.REPAIR
    assert "V3_9__nine.verify.sql" in result.output and "V3_9 not logged" in result.output


def test_down_to_then_up(empty_db_dsn: str, fx: FixtureSet) -> None:
    fx.migrator(empty_db_dsn).up()
    before = snapshot(empty_db_dsn)
    assert fx.migrator(empty_db_dsn).down("3_9") == ["V10__major", "V3_010__ten"]
    assert [r[0] for r in history(empty_db_dsn)] == ["1", "3_9"]
    assert fx.migrator(empty_db_dsn).up()[:2] == ["V3_010__ten", "V10__major"]
    after = snapshot(empty_db_dsn)
    # Same tables, columns, functions (oids differ: they were recreated).
    assert _shape(after) == _shape(before)


def _shape(snap: dict[str, object]) -> tuple[object, ...]:
    rels = [(n, r, k) for n, r, k, _oid in snap["relations"]]  # type: ignore[attr-defined]
    names = {oid: (n, r) for n, r, _k, oid in snap["relations"]}  # type: ignore[attr-defined]
    attrs = sorted((names[oid], a, t) for oid, a, t in snap["attributes"])  # type: ignore[attr-defined]
    return rels, attrs, snap["functions"], [r[0] for r in snap["history"]]  # type: ignore[index]


# ---- refusals before anything runs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE INDEX CONCURRENTLY t9_c10 ON fx.t9 (c10);",
        "DROP INDEX CONCURRENTLY IF EXISTS fx.t9_c10;",
        "REINDEX (CONCURRENTLY) TABLE fx.t9;",
        "REINDEX TABLE CONCURRENTLY fx.t9;",
        "VACUUM fx.t9;",
        "VACUUM (ANALYZE) fx.t9;",
        "CREATE DATABASE must_not_exist;",
        "ALTER SYSTEM SET work_mem = '64MB';",
    ],
)
def test_statement_that_cannot_run_in_a_transaction_is_refused_up_front(
    empty_db_dsn: str, fx: FixtureSet, statement: str
) -> None:
    (fx.migrations / "V11__bad.sql").write_text(
        f"-- no header\nALTER TABLE fx.t9 ADD COLUMN c11 int;\n{statement}\n"
    )
    before = snapshot(empty_db_dsn)
    with pytest.raises(MigrationError, match=r"V11__bad.sql:3: .*cannot run inside a transaction"):
        fx.migrator(empty_db_dsn).up()
    # Nothing ran: not even V1 .. V10, which came before the bad file.
    assert snapshot(empty_db_dsn) == before
    with pytest.raises(MigrationError, match=r"V11__bad\.sql:3"):
        fx.migrator(empty_db_dsn).plan()


@pytest.mark.parametrize(
    "statement", ["BEGIN;", "COMMIT;", "ROLLBACK;", "START TRANSACTION;", "SAVEPOINT s;"]
)
@pytest.mark.parametrize("header", ["", "-- sigledger:no-transaction\n"])
def test_transaction_control_is_refused(
    empty_db_dsn: str, fx: FixtureSet, statement: str, header: str
) -> None:
    (fx.migrations / "V11__bad.sql").write_text(f"{header}SELECT 1;\n{statement}\nSELECT 2;\n")
    before = snapshot(empty_db_dsn)
    with pytest.raises(MigrationError, match=r"V11__bad.sql:\d: transaction control"):
        fx.migrator(empty_db_dsn).up()
    assert snapshot(empty_db_dsn) == before


def test_bad_repeatable_is_refused_before_any_migration_runs(empty_db_dsn: str, fx: FixtureSet) -> None:
    (fx.functions / "030_bad.sql").write_text("CREATE INDEX CONCURRENTLY t9_c10 ON fx.t9 (c10);\n")
    before = snapshot(empty_db_dsn)
    with pytest.raises(MigrationError, match=r"030_bad\.sql:1"):
        fx.migrator(empty_db_dsn).up()
    assert snapshot(empty_db_dsn) == before


def test_always_repeatable_runs_with_every_change_and_when_edited(empty_db_dsn: str, fx: FixtureSet) -> None:
    always = fx.functions / "900_always.sql"
    always.write_text(
        "-- sigledger:always\n-- re-applied whenever anything else is\n"
        "INSERT INTO fx.applied_log (what) VALUES ('rep:900_always');\n"
    )

    def reps() -> list[str]:
        return [w for w in applied_log(empty_db_dsn) if w.startswith("rep:")]

    assert fx.migrator(empty_db_dsn).up()[-3:] == [
        f"repeatable {n}" for n in [*REPEATABLES, "900_always.sql"]
    ]
    assert fx.migrator(empty_db_dsn).up() == []
    assert fx.migrator(empty_db_dsn).status().exit_code == EXIT_OK

    second = fx.functions / "020_second.sql"
    second.write_text(second.read_text() + "-- edited\n")
    assert fx.migrator(empty_db_dsn).up() == ["repeatable 020_second.sql", "repeatable 900_always.sql"]

    # Editing the always file alone is a change too: status reports it and up applies it.
    always.write_text(always.read_text() + "-- edited\n")
    status = fx.migrator(empty_db_dsn).status()
    assert status.repeatables_pending == ["900_always.sql"] and status.exit_code == EXIT_PENDING
    assert fx.migrator(empty_db_dsn).up() == ["repeatable 900_always.sql"]
    assert fx.migrator(empty_db_dsn).up() == []

    (fx.migrations / "V11__more.sql").write_text("CREATE TABLE fx.t11 (id int);\n")
    assert fx.migrator(empty_db_dsn).up() == ["V11__more", "repeatable 900_always.sql"]
    assert reps() == [
        "rep:010_first",
        "rep:020_second",
        "rep:900_always",
        "rep:020_second",
        "rep:900_always",
        "rep:900_always",
        "rep:900_always",
    ]


@pytest.mark.parametrize(
    "args",
    [["up", "--to", "banana"], ["down", "--to", "V3_x"], ["baseline", "V"], ["plan", "--to", "3__1"]],
)
def test_malformed_version_argument_is_a_clear_error(
    empty_db_dsn: str, fx: FixtureSet, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    result = cli(["migrate", *args, "--dsn", empty_db_dsn], monkeypatch, fx)  # raises on a traceback
    assert result.exit_code == 1 and "is not a version" in result.output
    assert history(empty_db_dsn) == []


def test_down_without_a_down_file_rolls_back_nothing(empty_db_dsn: str, fx: FixtureSet) -> None:
    fx.migrator(empty_db_dsn).up()
    (fx.migrations / "V3_010__ten.down.sql").unlink()
    before = snapshot(empty_db_dsn)
    with pytest.raises(MigrationError, match=r"no down file for V3_010__ten; nothing was rolled back"):
        fx.migrator(empty_db_dsn).down("1")
    assert snapshot(empty_db_dsn) == before  # not even V10, which has a down file


def test_pending_file_below_the_newest_applied_is_refused_unless_allowed(
    empty_db_dsn: str, fx: FixtureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late file numbered under an applied one (an old branch merged late) is not applied silently."""
    fx.migrator(empty_db_dsn).up()
    (fx.migrations / "V2__late.sql").write_text("CREATE TABLE fx.late (id int);\n")
    before = history(empty_db_dsn)
    with pytest.raises(MigrationError, match="V2__late") as refused:
        fx.migrator(empty_db_dsn).up()
    assert "--allow-out-of-order" in str(refused.value)
    assert history(empty_db_dsn) == before
    status = fx.migrator(empty_db_dsn).status()
    assert status.out_of_order == ["V2__late"] and status.exit_code == EXIT_DRIFT
    code, shown = status_json(empty_db_dsn, monkeypatch, fx)
    assert code == EXIT_DRIFT and shown["out_of_order"] == ["V2__late"]
    assert fx.migrator(empty_db_dsn, allow_out_of_order=True).up() == ["V2__late"]
    assert fx.migrator(empty_db_dsn).status().exit_code == EXIT_OK
    result = cli(["migrate", "status", "--dsn", empty_db_dsn], monkeypatch, fx)
    assert result.exit_code == EXIT_OK
