"""The exit statuses every command shares (sigledger.cli.exit_codes, documented in docs/operations.md): an
unreachable database is one line naming host, port and cause, and exit 69 - not a wait, pool warnings, and the
status of a budget denial."""

from __future__ import annotations

import re

import pytest
from sigledger.cli import exit_codes
from sigledger.core.localdb import free_port

from tests.reports.helpers import ROOT, cli_process, run


@pytest.mark.parametrize(
    "args",
    [
        ("agent", "list"),
        ("agent", "status", "x"),
        ("cost", "report", "--by", "model"),
        ("budget", "tree"),
        ("budget", "watch", "--count", "1"),
        ("reservation", "list"),
        ("metrics", "serve", "--port", "1"),
        ("migrate", "status"),
    ],
)
def test_unreachable_database_is_one_line_and_exit_69(args: tuple[str, ...]) -> None:
    port = free_port()  # nothing listens there
    result = cli_process(*args, "--dsn", f"host=127.0.0.1 port={port} dbname=sigledger user=postgres")
    assert result.returncode == exit_codes.UNAVAILABLE, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: database unavailable") and f"127.0.0.1:{port}" in lines[0]
    assert re.search(r"refused|could not connect|failed", lines[0], re.I), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_usage_is_2_and_a_refusal_is_1(db_dsn: str) -> None:
    assert run(db_dsn, "cost", "report", "--by", "colour").exit_code == exit_codes.USAGE
    assert run(db_dsn, "agent", "create", "ex-a", "--limit", "1").exit_code == exit_codes.OK
    denied = run(db_dsn, "budget", "reserve", "ex-a", "2")
    assert denied.exit_code == exit_codes.REFUSED and "[SLB01]" in denied.output
    unknown = run(db_dsn, "agent", "status", "nobody")
    assert unknown.exit_code == exit_codes.REFUSED and "[P0002]" in unknown.output


def test_the_exit_codes_are_documented() -> None:
    ops = (ROOT / "docs" / "operations.md").read_text()
    section = ops[ops.index("## Exit codes") :]
    for code, _meaning in exit_codes.TABLE:
        assert f"| {code} |" in section, code
