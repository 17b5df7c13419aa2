"""The text rules as the API applies them (issue 11, item 7; docs/text-rules.md): Unicode whitespace and format
characters are blank and are trimmed, names are stored NFC, resolution folds case and compatibility forms
the same way for every caller and whatever the server's collation."""

from __future__ import annotations

import unicodedata

import psycopg
import pytest

# tab, line feed, no-break space, ideographic space, zero-width space, word joiner + BOM, LRM
BLANKS = ["\t", "\n", "\u00a0", "\u3000", "\u200b", "\u2060\ufeff", "\u200e", " \u00a0\t"]


def _state(app: psycopg.Connection, sql: str, args: tuple) -> str | None:
    try:
        with app.transaction():
            app.execute(sql, args)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


@pytest.mark.parametrize("blank", BLANKS, ids=[repr(b) for b in BLANKS])
def test_blank_text_is_refused_everywhere(conn: psycopg.Connection, app_dsn: str, blank: str) -> None:
    agent = conn.execute("SELECT sigledger.create_agent('blank-agent', 100)").fetchone()[0]
    entity = conn.execute("SELECT sigledger.create_entity('Blankco')").fetchone()[0]
    calls = [
        ("SELECT sigledger.record_cost(%s, %s, 'm', 'p', 0, 0, 0)", (blank, agent)),
        ("SELECT sigledger.record_cost('k1', %s, %s, 'p', 0, 0, 0)", (agent, blank)),
        ("SELECT sigledger.record_cost('k2', %s, 'm', %s, 0, 0, 0)", (agent, blank)),
        ("SELECT sigledger.reserve_budget(%s, 1, p_idempotency_key => %s)", (agent, blank)),
        ("SELECT sigledger.create_entity(%s)", (blank,)),
        ("SELECT sigledger.create_entity('Named', ARRAY[%s])", (blank,)),
        ("SELECT sigledger.add_alias(%s, %s)", (entity, blank)),
        ("SELECT sigledger.resolve_entity(%s)", (blank,)),
        ("SELECT sigledger.create_opportunity(%s)", (blank,)),
        ("SELECT sigledger.ingest_signal(%s, 'x', now())", (blank,)),
        ("SELECT sigledger.ingest_signal('src', %s, now())", (blank,)),
        ("SELECT sigledger.ingest_signal('src', 'y', now(), '{}', ARRAY[%s])", (blank,)),
    ]
    before = conn.execute(
        "SELECT (SELECT count(*) FROM sigledger.llm_cost_log), (SELECT count(*) FROM "
        "sigledger.entities), (SELECT count(*) FROM sigledger.signals)"
    ).fetchone()
    with psycopg.connect(app_dsn, autocommit=True) as app:
        states = {sql: _state(app, sql, args) for sql, args in calls}
    assert all(s == "22023" for s in states.values()), states
    after = conn.execute(
        "SELECT (SELECT count(*) FROM sigledger.llm_cost_log), (SELECT count(*) FROM "
        "sigledger.entities), (SELECT count(*) FROM sigledger.signals)"
    ).fetchone()
    assert after == before


def test_admin_names_are_refused_blank(conn: psycopg.Connection) -> None:
    for sql in (
        "SELECT sigledger.create_agent(%s)",
        "SELECT sigledger.create_group_budget('team', %s, 10)",
        "SELECT sigledger.add_model_price(%s, 'm', 1, 1)",
        "SELECT sigledger.add_model_price('p', %s, 1, 1)",
    ):
        assert _state(conn, sql, ("\u3000\u200b",)) == "22023", sql


def test_padded_mentions_resolve_to_one_entity(conn: psycopg.Connection, app_dsn: str) -> None:
    with psycopg.connect(app_dsn, autocommit=True) as app:
        for n, mention in enumerate(["Acme", "\u00a0Acme\u3000", "\u200bACME\t", "acme\u2060"]):
            app.execute(
                "SELECT sigledger.ingest_signal('pad', %s, now(), '{}', ARRAY[%s])", (str(n), mention)
            )
    rows = conn.execute("SELECT name FROM sigledger.entities").fetchall()
    assert rows == [("Acme",)]


def test_names_are_stored_nfc_and_resolve_across_forms(conn: psycopg.Connection, app_dsn: str) -> None:
    nfd = unicodedata.normalize("NFD", "Café")
    with psycopg.connect(app_dsn, autocommit=True) as app:
        cafe = app.execute("SELECT sigledger.create_entity(%s)", (nfd,)).fetchone()[0]
        assert app.execute(
            "SELECT name FROM sigledger.entity_with_aliases WHERE id = %s", (cafe,)
        ).fetchone()[0] == unicodedata.normalize("NFC", "Café")
        for spelling in ("Café", "CAFÉ", nfd.upper(), " café\u00a0"):
            assert app.execute("SELECT sigledger.resolve_entity(%s)", (spelling,)).fetchone()[0] == cafe, (
                spelling
            )
        acme = app.execute("SELECT sigledger.create_entity('ACME')").fetchone()[0]
        assert app.execute("SELECT sigledger.resolve_entity('ＡＣＭＥ')").fetchone()[0] == acme  # fullwidth
        assert app.execute("SELECT sigledger.resolve_entity('Ca\u200bfé')").fetchone()[0] == cafe


def test_case_folding_dotted_i_and_sharp_s(app_dsn: str) -> None:
    """Unicode default case folding, the same for every language: İ (dotted capital I) is its own letter,
    I and i are one, ß is ss."""
    with psycopg.connect(app_dsn, autocommit=True) as app:
        dotted = app.execute("SELECT sigledger.create_entity('İstanbul')").fetchone()[0]
        plain = app.execute("SELECT sigledger.create_entity('Istanbul')").fetchone()[0]  # no 23505
        assert dotted != plain
        resolve = "SELECT sigledger.resolve_entity(%s)"
        assert app.execute(resolve, ("istanbul",)).fetchone()[0] == plain
        assert app.execute(resolve, ("ISTANBUL",)).fetchone()[0] == plain
        assert app.execute(resolve, ("i̇stanbul",)).fetchone()[0] == dotted  # i + U+0307
        assert app.execute(resolve, ("ıstanbul",)).fetchone()[0] is None  # dotless i stays distinct
        strasse = app.execute("SELECT sigledger.create_entity('Straße')").fetchone()[0]
        assert app.execute(resolve, ("STRASSE",)).fetchone()[0] == strasse
        assert app.execute(resolve, ("strasse",)).fetchone()[0] == strasse
        assert _state(app, "SELECT sigledger.create_entity('STRASSE')", ()) == "23505"


def test_control_characters_inside_names_are_refused(app_dsn: str) -> None:
    with psycopg.connect(app_dsn, autocommit=True) as app:
        assert _state(app, "SELECT sigledger.create_entity(%s)", ("Ac\nme",)) == "22023"
        assert _state(app, "SELECT sigledger.create_entity(%s)", ("Ac\x01me",)) == "22023"
