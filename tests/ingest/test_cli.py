"""`sigledger signal ingest`, `sigledger opportunity merge`, `sigledger entity resolve` against a real
database: summaries, line numbers of rejected lines, clear errors with non-zero exits, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from click.testing import CliRunner, Result
from sigledger.cli import main


def run(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def test_signal_ingest_reports_every_line(conn: psycopg.Connection, app_dsn: str, tmp_path: Path) -> None:
    good = {
        "source": "cli",
        "external_id": "1",
        "occurred_at": "2026-01-01T00:00:00Z",
        "mentions": ["Acme", "Beta"],
    }
    lines = [
        json.dumps(good),
        json.dumps({**good, "external_id": "2", "mentions": ["acme"]}),
        "",
        "{not json",
        json.dumps(good),  # duplicate
        json.dumps({**good, "external_id": "3", "occurred_at": "yesterday-ish"}),
        json.dumps([1, 2]),
        json.dumps({**good, "external_id": "4", "mentions": []}),
    ]
    path = tmp_path / "signals.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run("signal", "ingest", str(path), "--dsn", app_dsn, "--batch-size", "3")
    assert result.exit_code == 1, result.output  # rejected lines: refused (2 is usage)
    assert "lines: 7  created: 3  duplicates: 1  rejected: 3  entity links: 3" in result.output
    assert "line 4: invalid JSON" in result.output
    assert "line 6: occurred_at is not a valid timestamp: yesterday-ish" in result.output
    assert "line 7: item is not a JSON object" in result.output
    assert conn.execute("SELECT count(*) FROM sigledger.signals WHERE source = 'cli'").fetchone()[0] == 3

    # replaying the file creates nothing
    again = run("signal", "ingest", str(path), "--dsn", app_dsn)
    assert "created: 0  duplicates: 4  rejected: 3" in again.output


def test_signal_ingest_clean_file_exits_zero(app_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(
        "".join(
            json.dumps({"source": "cli", "external_id": str(i), "occurred_at": "2026-01-01"}) + "\n"
            for i in range(25)
        )
    )
    result = run("signal", "ingest", str(path), "--dsn", app_dsn, "--batch-size", "10")
    assert result.exit_code == 0, result.output
    assert "created: 25" in result.output


def test_opportunity_merge(conn: psycopg.Connection, app_dsn: str) -> None:
    a, b, c = (conn.execute("SELECT sigledger.create_opportunity(%s)", (t,)).fetchone()[0] for t in "abc")
    ok = run("opportunity", "merge", str(a), str(b), str(c), "--dsn", app_dsn)
    assert ok.exit_code == 0, ok.output
    assert f"merged 2 into {a}" in ok.output

    again = run("opportunity", "merge", str(b), str(a), "--dsn", app_dsn)
    assert again.exit_code == 1
    assert f"error [SLM01]: opportunity {b} is a tombstone: it was merged into {a}" in again.output

    itself = run("opportunity", "merge", str(a), str(a), "--dsn", app_dsn)
    assert itself.exit_code == 1 and "[SLM02]" in itself.output

    bad = run("opportunity", "merge", "not-a-uuid", str(a), "--dsn", app_dsn)
    assert bad.exit_code == 2 and "not a valid UUID" in bad.output

    assert conn.execute("SELECT count(*) FROM sigledger.opportunity_merges").fetchone()[0] == 1


def test_entity_resolve(conn: psycopg.Connection, app_dsn: str) -> None:
    entity = conn.execute("SELECT sigledger.create_entity('Acme Corp', ARRAY['ACME'])").fetchone()[0]
    found = run("entity", "resolve", "  acme ", "--dsn", app_dsn)
    assert found.exit_code == 0, found.output
    assert str(entity) in found.output and "aliases: ACME, Acme Corp" in found.output

    missing = run("entity", "resolve", "nobody", "--dsn", app_dsn)
    assert missing.exit_code == 1 and "no entity has the alias 'nobody'" in missing.output

    blank = run("entity", "resolve", " ", "--dsn", app_dsn)
    assert blank.exit_code == 1 and "[22023]" in blank.output
