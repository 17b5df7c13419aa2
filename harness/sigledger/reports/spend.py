"""What the sync and the async report client share (no I/O): the dimensions of ``spend_report``, and the merge
of one report per chunk of a time range into the report of their union (spend, calls and tokens add up)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sigledger.core.money import normalize_row

Row = dict[str, Any]

DIMENSIONS = ("agent", "team", "org", "model", "provider", "day", "week", "month", "tag")
#: output columns of spend_report whose values identify a group (merging chunks keys on them)
GROUP_KEYS = ("bucket", "agent_id", "agent", "team", "org", "model", "provider", "tag")
SUMS = ("spend_usd", "calls", "input_tokens", "output_tokens")


def report_order(row: Row) -> tuple[Any, ...]:
    """spend_report's ORDER BY: bucket, spend descending, then the names (NULLs last, as in SQL)."""
    names = tuple(
        (row[k] is None, row[k] or "") for k in ("agent", "team", "org", "model", "provider", "tag")
    )
    earliest = dt.datetime.min.replace(tzinfo=dt.UTC)
    return (row["bucket"] is None, row["bucket"] or earliest, -row["spend_usd"], *names)


class ChunkedReport:
    """Adds up the reports of consecutive chunks of a time range, group by group, and their total rows."""

    def __init__(self) -> None:
        self.merged: dict[tuple[Any, ...], Row] = {}
        self.total: Row | None = None
        self.calls = 0  # ledger calls read so far (the total rows' calls)

    def add(self, rows: list[Row]) -> None:
        for row in rows:
            if row["is_total"]:
                self.calls += int(row["calls"])
                if self.total is None:
                    self.total = dict(row)
                else:
                    for k in SUMS:
                        self.total[k] += row[k]
                continue
            key = tuple(row[k] for k in GROUP_KEYS)
            if key in self.merged:
                for k in SUMS:
                    self.merged[key][k] += row[k]
            else:
                self.merged[key] = dict(row)

    def rows(self) -> list[Row]:
        """The merged groups in the report's order, then the total (sums normalised again: 0.5 + 0.5 = 1)."""
        assert self.total is not None  # every call returns its total row
        ordered = sorted(self.merged.values(), key=report_order)
        return [normalize_row(r) for r in (*ordered, self.total)]
