"""V8_020/V8_021 renormalise the aliases a database already holds (issue 11, item 7): whatever the earlier
schema accepted (untrimmed Unicode spaces, NFD, fullwidth, blank-looking, case variants that only the new
folding unites, aliases of tombstones) is keyed, renamed to its canonical form, or - when it conflicts - moved
to entity_alias_conflicts with its reason. The migration never fails on such data and loses nothing."""

from __future__ import annotations

import itertools
import unicodedata
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from sigledger.cli import main
from sigledger.core.errors import MigrationError
from sigledger.core.paths import functions_dir
from sigledger.migrate import Migrator
from sigledger.migrate.rollback import DataLossRefused

# the last version before the text rules (V7_001 today; the deployment block V8_001.. when it lands)
BEFORE = [m.version for m in Migrator("").migrations() if m.key < (8, 20)][-1]

_age = itertools.count()
NFD_CAFE = unicodedata.normalize("NFD", "Café")
NFC_CAFE = unicodedata.normalize("NFC", "Café")


def _entity(conn: psycopg.Connection, name: str, aliases: list[str], merged_into: str | None = None) -> str:
    eid = conn.execute(
        "INSERT INTO sigledger.entities (name, merged_into, merged_at) VALUES (%s, %s, "
        "CASE WHEN %s::uuid IS NULL THEN NULL ELSE now() END) RETURNING id",
        (name, merged_into, merged_into),
    ).fetchone()[0]
    for alias in aliases:  # each alias a day newer than the one before
        conn.execute(
            "INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id, created_at) "
            "VALUES (%s, %s, now() - make_interval(days => 100 - %s))",
            (alias, eid, next(_age)),
        )
    return str(eid)


@pytest.fixture
def dirty_db(empty_db_dsn: str) -> str:
    """A database at the version before the text rules, with the outbox and the tombstone backstop triggers of
    the repeatable files, holding aliases that the old rules (trimmed by btrim, unique by lower()) accepted."""
    Migrator(empty_db_dsn).up(BEFORE)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("SET ROLE sigledger_owner")  # as the runner applies repeatables
        for name in ("020_outbox.sql", "200_ingest_internals.sql"):
            conn.execute((functions_dir() / name).read_text())
        conn.execute("RESET ROLE")
        _entity(conn, "Straße", ["Straße"])
        _entity(conn, "Strasse B", ["STRASSE"])  # newer: loses the key "strasse"
        _entity(conn, "Café", [NFD_CAFE, NFC_CAFE])  # one entity, two spellings of one key
        _entity(conn, "Acme", ["Acme\u00a0"])  # renamed to "Acme"
        _entity(conn, "Blank", ["\u200b"])  # blank under the new rules
        _entity(conn, "Wide", ["ＡＣＭＥ"])  # newer than "Acme\u00a0": loses the key "acme"
        head = _entity(conn, "Head", ["Head"])
        tomb = _entity(conn, "Tomb", [], merged_into=head)
        conn.execute(  # an alias left on a tombstone (the seed's merge did not move them)
            "ALTER TABLE sigledger.entity_aliases DISABLE TRIGGER entity_aliases_no_tombstone_ins"
        )
        conn.execute(
            "INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id) VALUES ('Gee', %s)", (tomb,)
        )
        conn.execute("ALTER TABLE sigledger.entity_aliases ENABLE TRIGGER entity_aliases_no_tombstone_ins")
        conn.execute(
            "INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id) VALUES ('Plain', %s)", (head,)
        )
        # a seed-era alias padded with ASCII spaces, under a trimmed CHECK that an earlier repair left NOT VALID
        # (an UPDATE of that row must fix the padding in the same statement, or the CHECK refuses it)
        conn.execute("ALTER TABLE sigledger.entity_aliases DROP CONSTRAINT entity_aliases_alias_trimmed")
        conn.execute(
            "INSERT INTO sigledger.entity_aliases (alias, canonical_entity_id) VALUES (' Padded ', %s)",
            (head,),
        )
        conn.execute(
            "ALTER TABLE sigledger.entity_aliases ADD CONSTRAINT entity_aliases_alias_trimmed "
            "CHECK (alias = btrim(alias)) NOT VALID"
        )
    return empty_db_dsn


def test_renormalisation_reports_conflicts_and_loses_nothing(
    dirty_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(dirty_db, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM sigledger.entity_aliases").fetchone()[0]
    log: list[str] = []
    migrator = Migrator(dirty_db, log=log.append)
    migrator.up()
    assert any("V8_021__alias_keys" in line for line in log)
    assert "moved to entity_alias_conflicts" in caplog.text
    assert migrator.verify() == []
    with psycopg.connect(dirty_db, autocommit=True) as conn:
        conflicts = {
            (alias, state): (reason, holder)
            for alias, state, reason, holder in conn.execute(
                "SELECT alias, sqlstate, reason, holder_alias FROM sigledger.alias_conflicts"
            ).fetchall()
        }
        assert set(conflicts) == {
            ("STRASSE", "23505"),
            (NFC_CAFE, "23505"),
            ("\u200b", "22023"),
            ("ＡＣＭＥ", "23505"),
            ("Gee", "SLM01"),
        }, conflicts
        assert conflicts[("STRASSE", "23505")][1] == "Straße"
        assert conflicts[("ＡＣＭＥ", "23505")][1] == "Acme"  # the holder, already renamed
        assert conflicts[(NFC_CAFE, "23505")][1] == NFC_CAFE  # the NFD one, renamed to NFC
        kept = conn.execute("SELECT count(*) FROM sigledger.entity_aliases").fetchone()[0]
        assert kept + len(conflicts) == before  # moved, not dropped
        aliases = {r[0] for r in conn.execute("SELECT alias FROM sigledger.entity_aliases").fetchall()}
        assert aliases == {"Straße", NFC_CAFE, "Acme", "Head", "Plain", "Padded"}
        straße = conn.execute("SELECT id FROM sigledger.entities WHERE name = 'Straße'").fetchone()[0]
        assert conn.execute("SELECT sigledger.resolve_entity('STRASSE')").fetchone()[0] == straße
        # the graph projection hears about every entity whose aliases changed: moved (Strasse B, Café, Blank,
        # Wide, Tomb) or renamed (Acme, Café, Head's " Padded ")
        changed = {
            r[0]
            for r in conn.execute(
                "SELECT e.name FROM sigledger.outbox o JOIN sigledger.entities e ON e.id = o.aggregate_id "
                "WHERE o.event_type = 'entity.aliases_renormalised'"
            ).fetchall()
        }
        assert changed == {"Strasse B", "Café", "Blank", "Wide", "Tomb", "Acme", "Head"}

    result = CliRunner().invoke(main, ["entity", "conflicts", "--dsn", dirty_db], catch_exceptions=False)
    assert result.exit_code == 3, result.output  # attention: something to act on
    assert "'STRASSE' of entity" in result.output and "[23505]" in result.output

    # rolling the text rules back would lose the moved aliases: refused by the runner (it lists the table),
    # and by V8_020's down file itself even when forced (they exist nowhere else)
    with pytest.raises(DataLossRefused) as refused:
        migrator.down(BEFORE)
    assert "sigledger.entity_alias_conflicts" in str(refused.value)
    with pytest.raises(MigrationError) as info:
        migrator.down(BEFORE, force=True)
    assert "entity_alias_conflicts holds 5 alias(es)" in str(info.value)


def test_a_clean_database_has_no_conflicts(empty_db_dsn: str, tmp_path: Path) -> None:
    Migrator(empty_db_dsn).up()
    result = CliRunner().invoke(main, ["entity", "conflicts", "--dsn", empty_db_dsn], catch_exceptions=False)
    assert result.exit_code == 0 and "no alias conflicts" in result.output
