"""Hypothesis strategies of hostile arguments for tests/core/test_hostile_inputs.py: values that every API
function must refuse (blank text, text over its limits in characters or in bytes, control characters, NaN and
infinities, negative or huge numbers, unknown ids, oversized arrays, JSON that PostgreSQL cannot take...).

A value is passed as text with an explicit cast in the SQL (`%s::numeric`), so that PostgreSQL itself decodes
it: the codes it raises while doing so are part of the contract (docs/errors.md)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import strategies as st

# whitespace and format characters: a value made only of them is blank (docs/text-rules.md)
INVISIBLE = "\t\n\v\f\r \u0085\u00a0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000\u00ad\u200b\u200c\u200d\u200e\u2060\ufeff\u180e\U000e0001"
CONTROL = "\x01\x07\x1b\x1f\x7f\x85\x9f"
FOUR_BYTES = "\U0001f600"

# PostgreSQL's codes for an argument it cannot decode into its type (docs/errors.md): any function may raise them
DECODING = frozenset(
    {"22003", "22007", "22008", "22009", "22015", "22P02", "22P05", "54000", "54001", "22023"}
)


def blank() -> st.SearchStrategy[str]:
    return st.text(alphabet=INVISIBLE, min_size=0, max_size=12)


def controlled() -> st.SearchStrategy[str]:
    """Visible text with a control character inside."""
    return st.builds(lambda a, c, b: a + c + b, st.text("abcXYZ", min_size=1, max_size=5), st.sampled_from(CONTROL),
                     st.text("xyz", min_size=1, max_size=5))  # fmt: skip


def too_long(chars: int, nbytes: int) -> st.SearchStrategy[str]:
    """Over the character limit, or within it but over the byte limit (four-byte characters)."""
    over_chars = st.integers(chars + 1, chars + 40).map(lambda n: "x" * n)
    options = [over_chars, st.just("y" * 100_000)]
    if nbytes // 4 + 1 <= chars:
        options.append(st.integers(nbytes // 4 + 1, chars).map(lambda n: FOUR_BYTES * n))
    return st.one_of(*options)


def bad_name(chars: int, nbytes: int, nullable: bool = True) -> st.SearchStrategy[str | None]:
    options = [blank(), controlled(), too_long(chars, nbytes)]
    if nullable:
        options.append(st.none())
    return st.one_of(*options)


def bad_key(chars: int = 200, nbytes: int = 800) -> st.SearchStrategy[str | None]:
    return st.one_of(blank(), controlled(), too_long(chars, nbytes), st.none())


def bad_enum(allowed: tuple[str, ...]) -> st.SearchStrategy[str | None]:
    near = (
        [v.upper() for v in allowed]
        + [f" {v}" for v in allowed]
        + [v.replace("o", "\u043e") for v in allowed]
    )
    return st.one_of(
        st.sampled_from([n for n in near if n not in allowed]),
        st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=20).filter(
            lambda s: s not in allowed
        ),
        st.just("z" * 100_000),
    )


def bad_money(maximum: str = "1000000", nullable: bool = True) -> st.SearchStrategy[str | None]:
    options = [
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0.000001"]),
        st.decimals(max_value=Decimal("-0.0000000001"), min_value=Decimal("-1e12"), places=10).map(str),
        st.decimals(min_value=Decimal(maximum) + 1, max_value=Decimal("1e30"), places=2).map(str),
        st.sampled_from(["twelve", "1,5", "0x10"]),
    ]
    if nullable:
        options.append(st.none())
    return st.one_of(*options)


def bad_tokens() -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.integers(max_value=-1, min_value=-(2**63)).map(str),
        st.integers(min_value=10**12 + 1, max_value=2**63 - 1).map(str),
        st.sampled_from(["99999999999999999999", "1.5", "many"]),
    )


def bad_timestamp() -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            "1999-12-31", "1900-01-01", "2200-01-01", "infinity", "-infinity", "yesterday-ish",
            "2026-01-01 99:00", "2026-13-01", "2026-01-01 10:00 Mars/Olympus", "2026-01-01 10:00+25",
        ]
    )  # fmt: skip


def bad_interval() -> st.SearchStrategy[str | None]:
    return (
        st.sampled_from(["0", "-1 minute", "8 days", "1000000000 years", "2147483648 months", "soon"])
        | st.none()
    )


def bad_json_object() -> st.SearchStrategy[str | None]:
    """Not a JSON object, or JSON PostgreSQL cannot take: a \\u0000 escape (22P05), nesting too deep (54001)."""
    return st.one_of(
        st.sampled_from(["[]", '"text"', "42", "null", "true", '[{"a": 1}]']),
        st.just('{"a": "\\u0000"}'),
        st.integers(20_000, 60_000).map(lambda n: "[" * n + "]" * n),
        st.just("{not json"),
    )


def unknown_uuid() -> st.SearchStrategy[str]:
    return st.uuids().map(str)


def bad_uuid_list(
    bound: int, known: list[str], duplicates_refused: bool = True
) -> st.SearchStrategy[list[str | None] | None]:
    """Empty, with a NULL, with a duplicate (where the function refuses one), over its bound, or naming ids that
    do not exist."""
    some_known = st.lists(st.sampled_from(known), min_size=1, max_size=3, unique=True)
    options = [
        st.just([]),
        st.none(),
        some_known.map(lambda ids: [*ids, None]),
        st.just([str(uuid.uuid4()) for _ in range(bound + 1)]),
        st.lists(unknown_uuid(), min_size=1, max_size=5),
    ]
    if duplicates_refused:
        options.append(some_known.map(lambda ids: ids + ids[:1]))
    return st.one_of(*options)


@dataclass(frozen=True)
class Arg:
    """One argument: its name, its SQL cast, a strategy of valid values and one of hostile values."""

    name: str
    cast: str
    valid: st.SearchStrategy[object]
    hostile: st.SearchStrategy[object] | None = None


def _with_hostile_fields(
    base: dict[str, object], fields: dict[str, st.SearchStrategy[object]]
) -> st.SearchStrategy:
    """The valid item base with at least one of fields made hostile (a None value drops the key)."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, object]:
        picked = draw(st.sets(st.sampled_from(sorted(fields)), min_size=1))
        item = dict(base)
        for name in picked:
            value = draw(fields[name])
            if value is None:
                item.pop(name, None)
            else:
                item[name] = value
        return item

    return build()


NOT_TEXT = st.sampled_from([17, [], {}, True])


def hostile_signal() -> st.SearchStrategy:
    """An ingest_signals item that must be rejected (as a row; the other items go on)."""
    base = {"source": "src", "external_id": "x", "occurred_at": "2026-01-01", "mentions": ["Acme"]}
    return _with_hostile_fields(base, {
        "source": st.one_of(bad_name(200, 800), NOT_TEXT),
        "external_id": st.one_of(bad_name(500, 1500), st.sampled_from([[], {}, True])),
        "occurred_at": st.sampled_from(["1999-12-31", "infinity", "-infinity", "yesterday-ish", "2026-01-01 99:00",
                                        "2026-13-01", "2026-01-01 10:00 Mars/Olympus", "2026-01-01 10:00+25", 5]) | st.none(),
        "payload": st.sampled_from([[], "x", 1]),
        "content": st.one_of(NOT_TEXT, st.just("c" * 1_000_001)),
        "mentions": st.one_of(st.just("Acme"), st.just([f"m{i}" for i in range(201)]),
                              st.lists(st.one_of(bad_name(500, 2000, nullable=False), NOT_TEXT), min_size=1, max_size=3)),
    })  # fmt: skip


def hostile_cost(agent: str) -> st.SearchStrategy:
    """A record_costs row that must be quarantined."""
    base = {"idempotency_key": "k", "agent_id": agent, "model": "m", "provider": "p", "input_tokens": 1,
            "output_tokens": 1, "cost_usd": "0.01"}  # fmt: skip
    return _with_hostile_fields(base, {
        "idempotency_key": bad_key(),
        "agent_id": st.one_of(unknown_uuid(), st.just("not-a-uuid")),
        "model": bad_name(200, 800),
        "provider": bad_name(200, 800),
        "input_tokens": bad_tokens(),
        "output_tokens": bad_tokens(),
        "cost_usd": bad_money(nullable=False),
        "created_at": bad_timestamp(),
        "metadata": st.sampled_from([[], "x", 1]),
    })  # fmt: skip


def hostile_batch() -> st.SearchStrategy[str]:
    """A batch refused as a whole: not an array, too long, or JSON that PostgreSQL cannot take."""
    return st.one_of(
        st.sampled_from(['{"a": 1}', '"batch"', "null", "{not json"]),
        st.just("[" + ",".join(["{}"] * 10_001) + "]"),
        st.just('[{"source": "\\u0000"}]'),
        st.integers(20_000, 60_000).map(lambda n: "[" * n + "]" * n),
    )
