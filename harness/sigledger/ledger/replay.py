"""Reading a journal segment back for replay (shared by both trackers): every line that is a valid record is
sent again; every other line becomes a dead-letter entry naming the file, the line number and the reason, so
one corrupt line never blocks the rest (issue 14: a JSONDecodeError used to fail every start)."""

from __future__ import annotations

from typing import Any

import psycopg

from sigledger.core.errors import DATA_ERRORS, JournalError, SigledgerError, primary_message
from sigledger.ledger.journal import Journal, Segment
from sigledger.ledger.records import CostRecord

RAW_LIMIT = 1000  # characters of a bad line kept in its dead-letter entry


def server_trouble(exc: BaseException) -> bool:
    """A database error that is not about the records sent (an outage, a read-only server, disk full, retries
    exhausted, an unmapped SQLSTATE): the tracker keeps them in the journal for a later flush, never dead-letters
    them. Only DATA_ERRORS (InvalidInput, NotFound) dead-letter a record."""
    return isinstance(exc, (SigledgerError, psycopg.Error)) and not isinstance(
        exc, (*DATA_ERRORS, JournalError)
    )


def rejection(record: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """The dead-letter entry of a record the database refused on its own: the primary message (which names the
    bad value) and the SQLSTATE, not the CONTEXT of every SQL statement the error went through."""
    return {
        "error": type(exc).__name__,
        "sqlstate": getattr(exc, "sqlstate", None),
        "message": primary_message(exc)[:RAW_LIMIT],
        "record": record,
    }


def parse_segment(seg: Segment) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records to send, dead-letter entries for the lines that are not records)."""
    records: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for line in Journal.read(seg):
        error = line.error
        if line.record is not None:
            try:
                records.append(CostRecord.from_json(line.record).to_json())
                continue
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                error = exc
        assert error is not None
        bad.append(
            {
                "file": str(seg.path),
                "line": line.number,
                "error": type(error).__name__,
                "message": str(error),
                "raw": line.raw.decode("utf-8", "replace")[:RAW_LIMIT],
            }
        )
    return records, bad
