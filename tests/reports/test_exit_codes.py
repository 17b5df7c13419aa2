"""The exit statuses every command shares (sigledger.cli.exit_codes, documented in docs/operations.md): an
unreachable database is one line naming host, port and cause, and exit 69 - not a wait, pool warnings, and the
status of a budget denial."""

from __future__ import annotations

import re

from sigledger.cli import exit_codes
from sigledger.core.localdb import free_port
from sigledger.migrate.preflight import EXIT_BLOCKED

from tests.reports.helpers import ROOT, cli_popen, run

COMMANDS = [
    ("agent", "list"),
    ("agent", "status", "x"),
    ("cost", "report", "--by", "model"),
    ("budget", "tree"),
    ("budget", "watch", "--count", "1"),
    ("reservation", "list"),
    ("metrics", "serve", "--port", "1"),
    ("migrate", "status"),
    ("graph", "status"),
]


def test_unreachable_database_is_one_line_and_exit_69() -> None:
    """Every command at once (the pool's commands wait out the 5 s connect timeout, in parallel)."""
    port = free_port()  # nothing listens there
    dsn = f"host=127.0.0.1 port={port} dbname=sigledger user=postgres"
    procs = [(args, cli_popen(*args, "--dsn", dsn)) for args in COMMANDS]
    try:
        results = [(args, *proc.communicate(timeout=120), proc.returncode) for args, proc in procs]
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    for args, stdout, stderr, returncode in results:
        assert returncode == exit_codes.UNAVAILABLE, (args, stdout + stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (args, stderr)
        # the library's Unavailable (Database.open() / connect()), whose message names host, port and cause
        assert lines[0].startswith("error: database unavailable") and f"127.0.0.1 port {port}" in lines[0]
        assert re.search(r"refused|could not connect|failed", lines[0], re.I), lines[0]
        assert "Traceback" not in stderr and stdout == "", args


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
    assert EXIT_BLOCKED == exit_codes.BLOCKED  # the preflight's status is one of the shared ones
    for code, _meaning in exit_codes.TABLE:
        assert f"| {code} |" in section, code
