"""Reading migration files: numeric version order, duplicates, checksums, statement splitting, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from sigledger.core.errors import MigrationError
from sigledger.migrate.files import checksum, discover_migrations, discover_repeatables, parse_statements


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
