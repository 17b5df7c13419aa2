"""One money type: ``Decimal``. Every amount sigledger takes goes through ``money()``: a Decimal (finite) or an
int is accepted, a float is refused with a TypeError (0.1 has no exact binary form: ``Decimal(0.1)`` is
0.1000000000000000055511151231257827...), and so is anything else (a str included: write ``Decimal("0.05")``).
Every amount sigledger returns goes through ``normalize()``: no ``Decimal('0E-10')``, no trailing zeros of the
column's scale, never an exponent; as text (the CLI's JSON and CSV) through ``text()``, the same normalised value
in fixed-point notation."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def money(value: Any, name: str = "amount") -> Decimal:
    """The Decimal for an amount given by a caller; TypeError for a float or another type."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        if isinstance(value, float):
            raise TypeError(
                f"{name}: a float ({value!r}) is not an exact amount; pass Decimal({str(value)!r}) or an int"
            )
        raise TypeError(
            f"{name}: expected a Decimal or an int, got a {type(value).__name__} ({value!r:.200})"
        )
    # NaN and the infinities pass: the database refuses them with 22023 and its own message, as for any caller
    return Decimal(value)


def optional_money(value: Any, name: str = "amount") -> Decimal | None:
    return None if value is None else money(value, name)


def normalize(value: Decimal) -> Decimal:
    """Decimal('0E-10') -> Decimal('0'), Decimal('0.0400000000') -> Decimal('0.04'), Decimal('1E+1') -> 10."""
    if not value.is_finite():
        return value
    if value.is_zero():
        return Decimal(0)
    reduced = value.normalize()
    exponent = reduced.as_tuple().exponent
    return reduced.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else reduced


def text(value: Decimal | int) -> str:
    """The normalised amount as fixed-point text: '0', '0.04', '10', '0.0000001' (str() would give '1E-7')."""
    return format(normalize(Decimal(value)), "f")


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """Every Decimal of a result row, normalized (money columns are numeric; no other numeric column exists in
    the API's results that would mind)."""
    return {k: normalize(v) if isinstance(v, Decimal) else v for k, v in row.items()}
