"""Signals, entities and opportunities from Python: thin calls of their SQL API, and the JSONL loader
behind `sigledger signal ingest`.

The loader never stops on a bad line, and every rejected line is reported with its line number, a SQLSTATE
and a reason:
- bytes that are not UTF-8: 22021 (never replaced by U+FFFD); a UTF-8 byte order mark at the start of the
  file is accepted;
- a line that is not JSON: 22P02, including the NaN and Infinity literals that Python's json module accepts
  and JSON does not; nesting too deep for the parser: 54001;
- an item that PostgreSQL cannot take as jsonb at all (a \u0000 escape: 22P05; a lone surrogate: 22P02) fails
  the whole ingest_signals call; the batch is then split in halves until each such item is alone, so that
  it is rejected with PostgreSQL's own SQLSTATE and message and every other item goes in (at most 2n - 1
  calls for a batch of n);
- an item that ingest_signals rejects comes back with its SQLSTATE and reason.
Batches are retried on deadlock, serialization failure or lock timeout: ingestion is idempotent per
(source, external_id), so a replayed batch cannot create anything twice.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from sigledger.core.db import Database
from sigledger.core.errors import Retryable, SigledgerError

INGEST_BATCH = (
    "SELECT item, signal_id, status, reason, linked_entities, queued_mentions, sqlstate "
    "FROM sigledger.ingest_signals(p_batch => %s::jsonb, p_unknown_policy => %s::text)"
)
MERGE_OPPORTUNITIES = (
    "SELECT target_id, moved_links, duplicate_links, merge_id "
    "FROM sigledger.merge_opportunities(p_target => %s::uuid, p_sources => %s::uuid[])"
)
RESOLVE_ENTITY = "SELECT sigledger.resolve_entity(p_name => %s::text) AS entity_id"
ENTITY_BY_ID = "SELECT id, name, entity_type, aliases FROM sigledger.entity_with_aliases WHERE id = %s::uuid"

MAX_BATCH = 10_000  # ingest_signals' own limit


@dataclass
class Rejected:
    line: int
    reason: str
    sqlstate: str | None = None


@dataclass
class IngestSummary:
    lines: int = 0
    created: int = 0
    duplicates: int = 0
    linked: int = 0
    queued: int = 0
    rejected: list[Rejected] = field(default_factory=list)


BOM = "\ufeff"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def read_jsonl(lines: Iterable[bytes | str]) -> Iterator[tuple[int, Any, tuple[str, str] | None]]:
    """(line number, parsed item or None, (SQLSTATE, reason) or None) for every non-blank line. Bytes are
    decoded as UTF-8, strictly; a byte order mark opening the first line is dropped."""
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.start + 4].hex(" ")
                yield number, None, ("22021", f"not valid UTF-8: byte {exc.start + 1} ({bad}): {exc.reason}")
                continue
        else:
            text = raw
        if number == 1 and text.startswith(BOM):
            text = text[len(BOM) :]
        text = text.strip()
        if not text:
            continue
        try:
            yield number, json.loads(text, parse_constant=_reject_constant), None
        except ValueError as exc:
            yield number, None, ("22P02", f"invalid JSON: {exc}")
        except RecursionError:
            yield number, None, ("54001", "invalid JSON: nested too deeply")


Entry = tuple[int, Any, tuple[str, str] | None]


def _batches(items: Iterator[Entry], size: int) -> Iterator[list[Entry]]:
    batch: list[Entry] = []
    for entry in items:
        batch.append(entry)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _with_retries(call: Callable[[], Any], attempts: int = 5) -> Any:
    for attempt in range(attempts):
        try:
            return call()
        except Retryable:
            if attempt == attempts - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _split_on_bad_items(
    db: Database, good: list[tuple[int, Any]], policy: str | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, result row) of ingest_signals for every item; an item that fails the call as a whole (a data
    exception or a program limit while the batch is decoded, SQLSTATE class 22 or 54) is isolated by splitting
    the batch in halves and comes back as a rejected row with PostgreSQL's SQLSTATE and message."""
    payload = json.dumps([item for _, item in good])
    try:
        rows = _with_retries(partial(db.call, INGEST_BATCH, (payload, policy)))
    except (SigledgerError, psycopg.Error) as exc:
        state = getattr(exc, "sqlstate", None) or ""
        if state[:2] not in ("22", "54"):
            raise
        if len(good) == 1:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else state
            yield good[0][0], {"status": "rejected", "reason": reason, "sqlstate": state}
            return
        half = len(good) // 2
        yield from _split_on_bad_items(db, good[:half], policy)
        yield from _split_on_bad_items(db, good[half:], policy)
        return
    for row in rows:
        yield good[row["item"] - 1][0], row


def ingest_lines(
    db: Database,
    lines: Iterable[bytes | str],
    *,
    batch_size: int = 500,
    policy: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Ingest JSONL lines (bytes, or already decoded text) in batches of ``batch_size`` (one transaction each);
    see the module docstring."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch size must be between 1 and {MAX_BATCH}, got {batch_size}")
    summary = IngestSummary()
    for batch in _batches(read_jsonl(lines), batch_size):
        summary.lines += len(batch)
        summary.rejected += [Rejected(n, why[1], why[0]) for n, _, why in batch if why is not None]
        good = [(n, item) for n, item, why in batch if why is None]
        if good:
            for line, row in _split_on_bad_items(db, good, policy):
                status = row["status"]
                if status == "created":
                    summary.created += 1
                    summary.linked += row["linked_entities"]
                    summary.queued += row["queued_mentions"]
                elif status == "duplicate":
                    summary.duplicates += 1
                else:
                    summary.rejected.append(Rejected(line, row["reason"], row["sqlstate"]))
        if progress:
            progress(len(batch))
    summary.rejected.sort(key=lambda r: r.line)
    return summary


def ingest_file(db: Database, path: Path, **kwargs: Any) -> IngestSummary:
    with path.open("rb") as handle:
        return ingest_lines(db, handle, **kwargs)


def merge_opportunities(db: Database, target: uuid.UUID, sources: list[uuid.UUID]) -> dict[str, Any]:
    """One merge_opportunities call (its own transaction). Raises MergeConflict, InvalidInput, NotFound."""
    row = db.call_one(MERGE_OPPORTUNITIES, (str(target), [str(s) for s in sources]))
    assert row is not None
    return row


def resolve_entity(db: Database, name: str) -> dict[str, Any] | None:
    """The live entity an alias names (id, name, entity_type, aliases), or None."""
    found = db.call_one(RESOLVE_ENTITY, (name,))
    if not found or found["entity_id"] is None:
        return None
    return db.call_one(ENTITY_BY_ID, (found["entity_id"],))
