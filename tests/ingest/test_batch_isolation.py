"""One bad item never sinks a batch (issue 11, item 6): ingest_signals returns it rejected with its SQLSTATE and
reason and ingests the others; `sigledger signal ingest` reports every bad line by number, ingests the rest,
rejects bytes that are not UTF-8 (never replaces them) and accepts a UTF-8 byte order mark."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from click.testing import CliRunner, Result
from sigledger.cli import main

GOOD = {"source": "iso", "occurred_at": "2026-01-01T00:00:00Z", "mentions": ["Acme"]}


def _ingest(app_dsn: str, batch: list[object]) -> list[tuple]:
    with psycopg.connect(app_dsn, autocommit=True) as app:
        return app.execute(
            "SELECT item, status, sqlstate, reason FROM sigledger.ingest_signals(%s::jsonb)",
            (json.dumps(batch),),
        ).fetchall()


def test_bad_items_are_rejected_with_sqlstate_and_the_others_ingested(
    conn: psycopg.Connection, app_dsn: str
) -> None:
    four_byte = "\U0001f600"
    batch = [
        {**GOOD, "external_id": "ok-1"},
        {**GOOD, "external_id": "tz", "occurred_at": "2026-01-01 10:00 Mars/Olympus_Mons"},
        {**GOOD, "external_id": "overflow", "occurred_at": "2026-01-01 99:00"},
        # within the character limits (200 and 500), over PostgreSQL's btree entry size in bytes
        {**GOOD, "source": four_byte * 200, "external_id": four_byte * 500},
        {**GOOD, "external_id": "blank-mention", "mentions": ["\u200b\u00a0"]},
        {**GOOD, "external_id": "ok-2"},
    ]
    rows = _ingest(app_dsn, batch)
    assert [(r[0], r[1]) for r in rows] == [
        (1, "created"),
        (2, "rejected"),
        (3, "rejected"),
        (4, "rejected"),
        (5, "rejected"),
        (6, "created"),
    ]
    assert rows[1][2] == "22023" and "Mars/Olympus_Mons" in rows[1][3], rows[1]
    assert rows[2][2] == "22008", rows[2]
    assert rows[3][2] == "22023" and "bytes" in rows[3][3], rows[3]
    assert rows[4][2] == "22023" and "blank" in rows[4][3], rows[4]
    assert rows[0][2] is None and rows[5][2] is None
    assert conn.execute("SELECT count(*) FROM sigledger.signals WHERE source = 'iso'").fetchone()[0] == 2


def _run(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def test_cli_reports_every_bad_line_and_ingests_the_rest(
    conn: psycopg.Connection, app_dsn: str, tmp_path: Path
) -> None:
    def line(n: int, **extra: object) -> bytes:
        return json.dumps({**GOOD, "source": "cli-iso", "external_id": str(n), **extra}).encode()

    four_byte = "\U0001f600"
    lines = [
        b"\xef\xbb\xbf" + line(1),  # a UTF-8 byte order mark: accepted
        line(2)[:-1] + b', "payload": {"x": NaN}}',  # Python's json accepts NaN; JSON does not
        line(3, content="nul \u0000 inside"),  # \u0000: PostgreSQL's jsonb refuses it
        line(4)[:-1] + b', "content": "\\ud800 lone"}',  # a lone surrogate escape
        line(5, occurred_at="2026-01-01 10:00 Mars/Olympus_Mons"),
        line(6, source=four_byte * 200, external_id=four_byte * 500),
        line(7)[:-1] + b', "content": "caf\xe9"}',  # a Latin-1 byte: not UTF-8
        line(8),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = _run("signal", "ingest", str(path), "--dsn", app_dsn, "--batch-size", "10")
    assert result.exit_code == 1, result.output  # rejected lines: refused (docs/operations.md, Exit codes)
    assert "lines: 8  created: 2  duplicates: 0  rejected: 6" in result.output
    for n, state in ((2, "22P02"), (3, "22P05"), (4, "22P02"), (5, "22023"), (6, "22023"), (7, "22021")):
        assert f"line {n}: [{state}]" in result.output, (n, result.output)
    stored = conn.execute(
        "SELECT external_id FROM sigledger.signals WHERE source = 'cli-iso' ORDER BY 1"
    ).fetchall()
    assert stored == [("1",), ("8",)]
    assert "\ufffd" not in result.output
