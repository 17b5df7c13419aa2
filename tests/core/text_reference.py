"""The text rules of docs/text-rules.md in Python: the reference the SQL functions are tested against, and the
generator of the character tables that V8_020__text_rules.sql holds.

    python tests/core/text_reference.py     prints the generated block of V8_020 (between its markers)

The tables come from Python's unicodedata, which must be at the Unicode version of PostgreSQL 15's
normalize() (14.0.0, the version of Python 3.11): the key is NFKC(casefold(NFKD(x))), and a table built from
another version would disagree with PostgreSQL about characters assigned in between.
"""

from __future__ import annotations

import sys
import unicodedata

UNICODE_VERSION = "14.0.0"

# PropList.txt White_Space (14.0.0).
WHITE_SPACE = [
    (0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
    (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
]  # fmt: skip
# DerivedCoreProperties.txt Default_Ignorable_Code_Point (14.0.0).
DEFAULT_IGNORABLE = [
    (0xAD, 0xAD), (0x34F, 0x34F), (0x61C, 0x61C), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
]  # fmt: skip


def _codepoints() -> range:
    return range(0x110000)


def _is_surrogate(cp: int) -> bool:
    return 0xD800 <= cp <= 0xDFFF


def _in(ranges: list[tuple[int, int]], cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def format_chars() -> list[int]:
    return [cp for cp in _codepoints() if not _is_surrogate(cp) and unicodedata.category(chr(cp)) == "Cf"]


def _ranges(cps: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for cp in sorted(set(cps)):
        if out and out[-1][1] == cp - 1:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return out


def _expand(ranges: list[tuple[int, int]]) -> list[int]:
    return [cp for lo, hi in ranges for cp in range(lo, hi + 1)]


def invisible_ranges() -> list[tuple[int, int]]:
    """Trimmed at both ends, and what a blank value consists of: White_Space, Cf, Default_Ignorable."""
    return _ranges(_expand(WHITE_SPACE) + format_chars() + _expand(DEFAULT_IGNORABLE))


def ignorable_ranges() -> list[tuple[int, int]]:
    """Dropped inside a resolution key: the invisible characters that are not spaces."""
    spaces = set(_expand(WHITE_SPACE))
    return _ranges([cp for cp in _expand(invisible_ranges()) if cp not in spaces])


INVISIBLE = frozenset(_expand(invisible_ranges()))
IGNORABLE = frozenset(_expand(ignorable_ranges()))


def canonical(value: str) -> str:
    """The stored form of a name: invisible characters trimmed at both ends, NFC."""
    start, end = 0, len(value)
    while start < end and ord(value[start]) in INVISIBLE:
        start += 1
    while end > start and ord(value[end - 1]) in INVISIBLE:
        end -= 1
    return unicodedata.normalize("NFC", value[start:end])


def key(value: str) -> str:
    """The resolution key: trimmed, inner ignorables dropped, NFKC(casefold(NFKD(x)))."""
    start, end = 0, len(value)
    while start < end and ord(value[start]) in INVISIBLE:
        start += 1
    while end > start and ord(value[end - 1]) in INVISIBLE:
        end -= 1
    kept = "".join(c for c in value[start:end] if ord(c) not in IGNORABLE)
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKD", kept).casefold())


def fold_table() -> list[tuple[int, str]]:
    """(code point, case folding) of every non-ASCII character that NFKD leaves alone and that case folding
    changes. Folding is idempotent (no folded character folds again), which the SQL loop relies on."""
    pairs: list[tuple[int, str]] = []
    for cp in range(0x80, 0x110000):
        if _is_surrogate(cp):
            continue
        ch = chr(cp)
        if unicodedata.normalize("NFKD", ch) != ch:
            continue  # never reaches the fold: NFKD runs first
        folded = ch.casefold()
        if folded != ch:
            assert folded.casefold() == folded, hex(cp)
            pairs.append((cp, folded))
    return pairs


def _cls(ranges: list[tuple[int, int]]) -> str:
    """A bracket expression body for PostgreSQL's regular expressions."""

    def esc(cp: int) -> str:
        return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"

    return "".join(esc(lo) if lo == hi else f"{esc(lo)}-{esc(hi)}" for lo, hi in ranges)


def _lit(text: str) -> str:
    """A SQL string literal of arbitrary characters, with U& escapes (the file stays ASCII)."""
    body = "".join(
        c if 0x20 < ord(c) < 0x7F and c not in "'\\" else f"\\+{ord(c):06x}" if c != "\\" else "\\\\"
        for c in text
    )
    return f"U&'{body}'"


def generated_block() -> str:
    if unicodedata.unidata_version != UNICODE_VERSION:
        raise SystemExit(
            f"unicodedata is at Unicode {unicodedata.unidata_version}, PostgreSQL 15 at {UNICODE_VERSION}: "
            "generate the tables with Python 3.11"
        )
    pairs = fold_table()
    single = [(cp, f) for cp, f in pairs if len(f) == 1]
    multi = [(cp, f) for cp, f in pairs if len(f) > 1]
    inv = _cls(invisible_ranges())
    ign = _cls(ignorable_ranges())
    lines = [
        f"-- BEGIN generated by tests/core/text_reference.py (Unicode {UNICODE_VERSION}): do not edit",
        "CREATE FUNCTION sigledger._text_canon(p_value text) RETURNS text",
        "LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE",
        "SET search_path = sigledger, pg_temp",
        "AS $canon$",
        "BEGIN",
        "    IF octet_length(p_value) = length(p_value) THEN  -- ASCII: one byte per character in UTF-8",
        "        RETURN btrim(p_value, E' \\t\\n\\x0b\\f\\r');",
        "    END IF;",
        f"    RETURN normalize(regexp_replace(p_value, '^[{inv}]+|[{inv}]+$', '', 'g'), NFC);",
        "END",
        "$canon$;",
        "",
        "CREATE FUNCTION sigledger._text_key(p_value text) RETURNS text",
        "LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE",
        "SET search_path = sigledger, pg_temp",
        "AS $key$",
        "DECLARE",
        "    v text;",
        "    c text;",
        "BEGIN",
        "    IF octet_length(p_value) = length(p_value) THEN",
        "        RETURN lower(btrim(p_value, E' \\t\\n\\x0b\\f\\r') COLLATE \"C\");",
        "    END IF;",
        "    -- trimmed, and the invisible characters that are not spaces dropped inside",
        f"    v := regexp_replace(p_value, '^[{inv}]+|[{inv}]+$|[{ign}]+', '', 'g');",
        "    -- NFKD first, so that only base letters and combining marks reach the fold; ASCII lowered by lower()",
        '    -- under "C" (A-Z only, whatever the database collation)',
        '    v := lower(normalize(v, NFKD) COLLATE "C");',
        "    -- full case folding (CaseFolding.txt C + F) of the rest: one replace() per distinct character that",
        "    -- folds (translate() would scan its whole table for every character: ~150 us for a short name)",
        "    FOR i IN 1 .. length(v) LOOP",
        f"        c := substring(v FROM '[{_cls(_ranges([cp for cp, _ in pairs]))}]');",
        "        EXIT WHEN c IS NULL;",
        "        v := replace(v, c, CASE c "
        + " ".join(f"WHEN {_lit(chr(cp))} THEN {_lit(f)}" for cp, f in multi)
        + " ELSE substr(",
        f"            {_lit(''.join(f for _, f in single))},",
        f"            strpos({_lit(''.join(chr(cp) for cp, _ in single))}, c), 1) END);",
        "    END LOOP;",
    ]
    lines += [
        "    RETURN normalize(v, NFKC);",
        "END",
        "$key$;",
        "-- END generated",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(generated_block())
