"""How every command prints rows: a table for people, JSON for scripts (``--json``), CSV for spreadsheets
(``--csv`` on reports).

One rule for each kind of value, whatever the command:
- money (a column ending in ``_usd``): in JSON and CSV the exact amount as a fixed-point string, normalised
  by ``sigledger.core.money.text`` like every amount the library returns (``"0"``, ``"0.4"``, never ``"0E-10"``
  or a float); in tables right-aligned with one precision (``MONEY_PLACES`` decimals);
- counts (calls, tokens, ids, versions): integers in JSON, right-aligned in tables;
- ratios (``used_ratio``): a decimal string in JSON and CSV, a percentage with one decimal in tables;
- times: ISO 8601 in UTC (``2026-11-30T13:45:00Z``); a bucket or period start at midnight prints as the date.
The kind of a column comes from its name (``kind_of``), so every command agrees without a list of its own.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, TypeVar

import click

from sigledger.core import money

MONEY_PLACES = 6
Row = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])

_COUNT_KEYS = frozenset(
    {
        "calls",
        "input_tokens",
        "output_tokens",
        "tokens_input",
        "tokens_output",
        "version",
        "open_reservations",
        "depth",
        "rank",
        "attempts",
        "delivered",
        "pending",
        "inserted",
        "duplicates",
        "quarantined",
        "expired",
        "drift_rows",
    }
)


def kind_of(key: str) -> str:
    """money | count | ratio | time | text, from the column name."""
    if key.endswith("_usd") or key.endswith("_usd_per_mtok"):
        return "money"
    if key.endswith("_ratio") or key == "threshold":
        return "ratio"
    if key in _COUNT_KEYS or key == "id" or (key.endswith("_id") and not key.endswith("agent_id")):
        return "count"
    if key.endswith("_at") or key in ("bucket", "period_start", "day", "valid_from", "valid_until"):
        return "time"
    return "text"


def iso(value: dt.datetime | dt.date) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.isoformat().replace("+00:00", "Z")
    return value.isoformat()


def json_value(key: str, value: Any) -> Any:
    """A value as it goes into JSON and CSV."""
    if value is None or isinstance(value, bool):
        return value
    kind = kind_of(key)
    if isinstance(value, Decimal):
        if kind == "count" and value == value.to_integral_value():
            return int(value)
        return money.text(value)
    if isinstance(value, float):
        return money.text(Decimal(repr(value)))
    if isinstance(value, dt.datetime | dt.date):
        return iso(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict | list | int | str):
        return value
    return str(value)


def _table_cell(key: str, value: Any, places: int) -> str:
    if value is None:
        return "-"
    kind = kind_of(key)
    if kind == "time" and isinstance(value, str):  # a document's ISO 8601 text
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if kind in ("money", "ratio") and isinstance(value, str):  # a document's exact string
        try:
            value = Decimal(value)
        except ArithmeticError:
            return value
    if kind == "money" and isinstance(value, Decimal | int | float):
        quantum = Decimal(1).scaleb(-places)
        return format(Decimal(str(value)).quantize(quantum, rounding=ROUND_HALF_EVEN), "f")
    if kind == "ratio" and isinstance(value, Decimal | int | float) and key != "threshold":
        return f"{Decimal(str(value)) * 100:.1f}%"
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.UTC) if value.tzinfo else value
        if kind == "time" and value.time() == dt.time(0) and key in ("bucket", "period_start", "day"):
            return value.date().isoformat()
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, Decimal):
        return money.text(value)
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def table(rows: Sequence[Row], columns: Sequence[str] | None = None, *, places: int = MONEY_PLACES) -> str:
    """Aligned text: numbers right, text left; money with `places` decimals."""
    if not rows:
        return "(none)"
    keys = list(columns or rows[0].keys())
    cells = [[_table_cell(k, r.get(k), places) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    right = [kind_of(k) in ("money", "count", "ratio") for k in keys]

    def line(values: Iterable[str]) -> str:
        return "  ".join(
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ).rstrip()

    return "\n".join([line(keys), *(line(c) for c in cells)])


def to_json(rows: Sequence[Row] | Row) -> str:
    if isinstance(rows, dict):
        return json.dumps({k: json_value(k, v) for k, v in rows.items()}, indent=2)
    return json.dumps([{k: json_value(k, v) for k, v in r.items()} for r in rows], indent=2)


def to_csv(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    buf = io.StringIO()
    keys = list(columns or (rows[0].keys() if rows else []))
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in rows:
        writer.writerow(["" if r.get(k) is None else _csv_cell(k, r.get(k)) for k in keys])
    return buf.getvalue().rstrip("\n")


def _csv_cell(key: str, value: Any) -> Any:
    out = json_value(key, value)
    if isinstance(out, bool):
        return "true" if out else "false"
    return json.dumps(out) if isinstance(out, dict | list) else out


def emit(
    rows: Sequence[Row] | Row,
    fmt: str = "table",
    columns: Sequence[str] | None = None,
) -> None:
    """Print rows (or one row) as a table, JSON (every field) or CSV (the table's columns)."""
    if fmt == "json":
        click.echo(to_json(rows))
        return
    items = [rows] if isinstance(rows, dict) else list(rows)
    if fmt == "csv":
        click.echo(to_csv(items, columns))
        return
    click.echo(table(items, columns))


def format_options(csv_too: bool = False) -> Callable[[F], F]:
    """--json (and --csv on reports): the output format, passed to the command as `fmt`."""

    def decorate(func: F) -> F:
        func = click.option(
            "--json", "fmt", flag_value="json", help="JSON: every field; money as exact strings."
        )(func)
        if csv_too:
            func = click.option("--csv", "fmt", flag_value="csv", help="CSV with a header line.")(func)
        return click.option("--table", "fmt", flag_value="table", default=True, hidden=True)(func)

    return decorate
