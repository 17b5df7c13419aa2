"""docs/api.md is generated from the database's COMMENTs; it must match a database built by the migrations.
Regenerate with `make api-docs`."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from pytest_postgresql.executors import PostgreSQLExecutor
from sigledger.core.apidoc import documented_sqlstates, render, sqlstates

from tests.conftest import make_dsn

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
ERRORS_DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def test_sqlstate_line_parsing() -> None:
    assert sqlstates("Reserves money.\nSQLSTATE: 22023, SLB01\n") == ["22023", "SLB01"]
    assert sqlstates("no codes") == []


def test_api_doc_is_current(pg: PostgreSQLExecutor, template_db: str, request: pytest.FixtureRequest) -> None:
    with psycopg.connect(make_dsn(pg, template_db)) as conn:
        current = render(conn)
    if request.config.getoption("--regenerate"):
        API_DOC.write_text(current)
    assert API_DOC.is_file(), "docs/api.md is missing: run `make api-docs`"
    assert API_DOC.read_text() == current, "docs/api.md is stale: run `make api-docs` and commit the diff"


def test_every_documented_sqlstate_is_in_the_error_table(pg: PostgreSQLExecutor, template_db: str) -> None:
    with psycopg.connect(make_dsn(pg, template_db)) as conn:
        codes = documented_sqlstates(conn)
    table = ERRORS_DOC.read_text()
    missing = sorted(code for code in codes if f"### `{code}`" not in table)
    assert not missing, f"SQLSTATEs raised by the API but absent from docs/errors.md: {missing}"


def test_role_lines_follow_the_grants_list(pg: PostgreSQLExecutor, template_db: str) -> None:
    # the generator used to print "callable by sigledger_app" for eight admin-only functions (issue 9): each
    # role line must name exactly the audience that sql/functions/900_grants.sql gives the function
    from sigledger.core.errors import audiences

    with psycopg.connect(make_dsn(pg, template_db)) as conn:
        text = render(conn)
    lines = dict(re.findall(r"### `(\w+)\(.*?\n\*\w+; callable by ([^*]+)\*", text, re.DOTALL))
    grants = {fn: ", ".join(sorted(roles)) for fn, roles in audiences().items() if not fn.startswith("_")}
    assert lines and lines == grants
