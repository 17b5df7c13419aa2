"""The text rules in SQL (V8_020's _text_canon and _text_key, 005's _text_arg) against their Python reference
(tests/core/text_reference.py): on every Unicode code point, on generated strings, and the fast paths against
the general one."""

from __future__ import annotations

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sigledger.core.paths import migrations_dir

from tests.core import text_reference as ref

V8_020 = migrations_dir() / "V8_020__text_rules.sql"
HYPOTHESIS = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# characters that matter to the rules, mixed into generated strings far more often than chance would
SPECIAL = (
    "".join(chr(c) for c in ref.INVISIBLE if c < 0x10000)[:60] + "ßẞİıΣςᾼǅＡａﬁ\u0301\u0345\x01\x7f\x9fé"
)
TEXT = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00") | st.sampled_from(SPECIAL)
)


def test_the_migration_holds_the_generated_tables() -> None:
    text = V8_020.read_text()
    start = text.index("-- BEGIN generated")
    end = text.index("-- END generated") + len("-- END generated\n")
    assert text[start:end] == ref.generated_block(), "regenerate: python tests/core/text_reference.py"


def _codepoints() -> list[int]:
    """Every code point the rules single out (invisible, folded, and what they fold to), everything below
    U+0800 (Latin, Greek, Cyrillic, Armenian, ...), and one in seven of the rest: about 170,000."""
    special = set(ref.INVISIBLE) | {cp for cp, _ in ref.fold_table()}
    special |= {ord(c) for _, folded in ref.fold_table() for c in folded}
    return [
        cp
        for cp in range(1, 0x110000)
        if not 0xD800 <= cp <= 0xDFFF and (cp in special or cp < 0x800 or cp % 7 == 0)
    ]


def test_code_points_canonical_and_key_match_the_reference(conn: psycopg.Connection) -> None:
    mismatches = []
    codepoints = _codepoints()
    for start in range(0, len(codepoints), 50_000):
        # alone (trimmed when invisible) and between letters (kept, or dropped from the key)
        values = [s for cp in codepoints[start : start + 50_000] for s in (chr(cp), f"A{chr(cp)}b")]
        rows = conn.execute(
            "SELECT sigledger._text_canon(v), sigledger._text_key(v) FROM unnest(%s::text[]) WITH ORDINALITY AS u (v, o) "
            "ORDER BY o",
            (values,),
        ).fetchall()
        mismatches += [
            (v, canon, key)
            for v, (canon, key) in zip(values, rows, strict=True)
            if canon != ref.canonical(v) or key != ref.key(v)
        ]
    assert mismatches == [], mismatches[:5]


@HYPOTHESIS
@given(values=st.lists(TEXT, min_size=1, max_size=50))
def test_generated_strings_match_the_reference(conn: psycopg.Connection, values: list[str]) -> None:
    rows = conn.execute(
        "SELECT sigledger._text_canon(v), sigledger._text_key(v), sigledger.text_key(v) "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS u (v, o) ORDER BY o",
        (values,),
    ).fetchall()
    assert rows == [(ref.canonical(v), ref.key(v), ref.key(v)) for v in values]


@HYPOTHESIS
@given(
    value=TEXT | st.text("ab \t", max_size=8) | st.just("x" * 9),
    kind=st.sampled_from(["name", "key", "text"]),
    chars=st.integers(1, 10),
    nbytes=st.integers(1, 30),
)
def test_text_arg_fast_paths_agree_with_text_norm(
    conn: psycopg.Connection, value: str, kind: str, chars: int, nbytes: int
) -> None:
    norm = conn.execute(
        "SELECT * FROM sigledger._text_norm(%s, 'v', %s, %s, %s)", (value, chars, nbytes, kind)
    ).fetchone()
    assert norm is not None
    try:
        with conn.transaction():
            got = conn.execute(
                "SELECT sigledger._text_arg(%s, 'v', %s, %s, %s)", (value, chars, nbytes, kind)
            ).fetchone()
    except psycopg.errors.InvalidParameterValue as exc:
        assert norm[1] is not None and exc.diag.message_primary == norm[1]
    else:
        assert got is not None and norm[1] is None and got[0] == norm[0]
