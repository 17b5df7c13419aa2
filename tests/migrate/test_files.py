"""Reading migration files: numeric version order, duplicates, checksums, statement splitting, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from sigledger.core.errors import MigrationError
from sigledger.migrate.files import (
    checksum,
    discover_migrations,
    discover_repeatables,
    generated_statement,
    parse_statements,
)


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_versions_are_ordered_numerically(tmp_path: Path) -> None:
    names = ["V10__major.sql", "V3_010__ten.sql", "V3_9__nine.sql", "V1__first.sql", "V3_008__eight.sql"]
    directory = _write(tmp_path, {n: "SELECT 1;" for n in names})
    order = [m.label for m in discover_migrations(directory)]
    assert order == ["V1__first", "V3_008__eight", "V3_9__nine", "V3_010__ten", "V10__major"]


def test_companions_attach_to_their_version(tmp_path: Path) -> None:
    directory = _write(
        tmp_path,
        {
            "V2__a.sql": "SELECT 1;",
            "V2__a.down.sql": "SELECT 2;",
            "V2__a.verify.sql": "SELECT 3 WHERE false;",
        },
    )
    [migration] = discover_migrations(directory)
    assert migration.down is not None and migration.down.path.name == "V2__a.down.sql"
    assert migration.verify is not None and migration.verify.path.name == "V2__a.verify.sql"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"V3_8__a.sql": "SELECT 1;", "V3_008__b.sql": "SELECT 1;"}, "same version"),
        ({"V3_008__a.sql": "SELECT 1;", "V3_008__b.sql": "SELECT 1;"}, "two up files for version V3_008"),
        ({"V4__x.down.sql": "SELECT 1;"}, "companion files without"),
        ({"V4__x.sql": "SELECT 1;", "readme.sql": "SELECT 1;"}, "readme.sql: not a migration file name"),
    ],
)
def test_bad_migration_sets_are_refused(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        discover_migrations(_write(tmp_path, files))


def test_repeatables_in_file_name_order(tmp_path: Path) -> None:
    directory = _write(tmp_path, {"900_grants.sql": "", "010_a.sql": "", "100_b.sql": ""})
    assert [r.name for r in discover_repeatables(directory)] == ["010_a.sql", "100_b.sql", "900_grants.sql"]


def test_checksum_ignores_line_endings_only() -> None:
    text = "CREATE TABLE t (id int);\nSELECT 1;\n"
    assert checksum(text) == checksum(text.replace("\n", "\r\n"))
    assert checksum(text) != checksum(text + "-- edited\n")
    assert checksum(text) != checksum(text.replace("int", "bigint"))


def test_statements_split_after_non_ascii_text() -> None:
    """Regression: offsets from the parser are characters, not UTF-8 bytes."""
    text = "-- café → naïve — note\nSELECT 1;\n-- ü\nSELECT 'é' AS x;\n\n  CREATE INDEX CONCURRENTLY i ON t (a);\n"
    statements = parse_statements(text, "x.sql")
    assert [s.sql for s in statements] == [
        "SELECT 1",
        "SELECT 'é' AS x",
        "CREATE INDEX CONCURRENTLY i ON t (a)",
    ]
    assert [s.line for s in statements] == [2, 4, 6]
    assert statements[2].concurrent_index == (None, "i")


def test_statements_split_with_dollar_quotes_and_semicolons_in_strings() -> None:
    text = "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT 'a;b' $$;\nSELECT ';';"
    assert len(parse_statements(text, "x.sql")) == 2


def test_unparsable_file_is_refused_naming_it() -> None:
    with pytest.raises(MigrationError, match=r"broken\.sql: SQL does not parse"):
        parse_statements("CREATE TABLE (;", "broken.sql")


def test_byte_order_mark_is_neither_sql_nor_a_change(tmp_path: Path) -> None:
    text = "-- sigledger:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);\n"
    directory = _write(tmp_path / "bom", {"V1__a.sql": "\ufeff" + text})
    plain = _write(tmp_path / "plain", {"V1__a.sql": text})
    [with_bom], [without] = discover_migrations(directory), discover_migrations(plain)
    assert not with_bom.up.transactional  # the header is still seen
    assert [s.sql for s in with_bom.up.statements] == ["CREATE INDEX CONCURRENTLY i ON t (a)"]
    assert with_bom.up.checksum == without.up.checksum


def test_unnamed_concurrent_index_is_refused(tmp_path: Path) -> None:
    """Without a name a failed build could not be found on re-run: a second index would be built beside it."""
    directory = _write(
        tmp_path, {"V1__a.sql": "-- sigledger:no-transaction\nCREATE INDEX CONCURRENTLY ON t (a);\n"}
    )
    [migration] = discover_migrations(directory)
    with pytest.raises(MigrationError, match=r"V1__a\.sql:2: CREATE INDEX CONCURRENTLY needs an index name"):
        migration.up.check_statements()


def test_gexec_ends_a_query_whose_result_is_run(tmp_path: Path) -> None:
    """psql's `\\gexec` on a line of its own ends a query as `;` does, and marks it: its result is the list of
    statements to run (the partitions a migration cannot name in advance, V8_101). Lines and the following
    statements are as without it."""
    text = (
        "-- sigledger:no-transaction\n"
        "SELECT format('CREATE INDEX CONCURRENTLY %I ON t (a)', 'i' || g) FROM generate_series(1, 2) g\n"
        "\\gexec\n"
        "\n"
        "SELECT 1;\n"
        "SELECT 'a\\gexec' \n  \\gexec  \n"
    )
    directory = _write(tmp_path, {"V1__a.sql": text})
    [migration] = discover_migrations(directory)
    statements = migration.up.statements
    assert [(s.line, s.gexec) for s in statements] == [(2, True), (5, False), (6, True)]
    assert statements[0].sql.startswith("SELECT format(") and statements[0].sql.endswith("g")
    assert statements[2].sql == "SELECT 'a\\gexec'"
    migration.up.check_statements()
    assert [(s.start, s.end, s.transaction) for s in migration.up.steps] == [
        (0, 1, False),
        (1, 2, False),
        (2, 3, False),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "SELECT 'x'\n\\gexec\n",
            r"V1__a\.sql:1: \\gexec runs its statements one by one: only in a file whose",
        ),
        (
            "-- sigledger:no-transaction\nBEGIN;\nSELECT 'x'\n\\gexec\nCOMMIT;\n",
            r"V1__a\.sql:3: \\gexec runs its statements one by one",
        ),
        ("-- sigledger:no-transaction\nSELECT 'x';\n\\gexec\n", r"V1__a\.sql:3: \\gexec must end a query"),
    ],
)
def test_gexec_is_refused_where_it_cannot_run_alone(tmp_path: Path, text: str, message: str) -> None:
    directory = _write(tmp_path, {"V1__a.sql": text})
    with pytest.raises(MigrationError, match=message):
        [migration] = discover_migrations(directory)
        migration.up.check_statements()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("SELECT 1; SELECT 2", "must be one statement, got 2"),
        ("COMMIT", "may not be transaction control"),
        ("CREATE INDEX CONCURRENTLY ON t (a)", "CREATE INDEX CONCURRENTLY needs an index name"),
        ("SELEC 1", "does not parse"),
    ],
)
def test_a_generated_statement_is_one_statement_the_runner_can_run_alone(value: str, message: str) -> None:
    with pytest.raises(MigrationError, match=rf"V1__a:7: .*{message}"):
        generated_statement(value, "V1__a", 7)
    ok = generated_statement("CREATE INDEX CONCURRENTLY i ON s.t (a);\n", "V1__a", 7)
    assert (ok.sql, ok.line, ok.concurrent_index, ok.needs_no_transaction) == (
        "CREATE INDEX CONCURRENTLY i ON s.t (a)",
        7,
        ("s", "i"),
        True,
    )
