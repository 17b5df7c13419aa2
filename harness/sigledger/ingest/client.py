"""Signals, entities and opportunities from Python: thin calls of their SQL API, and the JSONL loader
behind `sigledger signal ingest`.

The loader never stops on a bad line: a line that is not JSON is rejected here, an item the database rejects
comes back from ingest_signals with its reason, and both are reported with their line number. Batches are
retried on deadlock, serialization failure or lock timeout: ingestion is idempotent per
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

from sigledger.core.db import Database
from sigledger.core.errors import Retryable

INGEST_BATCH = (
    "SELECT item, signal_id, status, reason, linked_entities, queued_mentions "
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


@dataclass
class IngestSummary:
    lines: int = 0
    created: int = 0
    duplicates: int = 0
    linked: int = 0
    queued: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def read_jsonl(lines: Iterable[str]) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed item or None, rejection reason or None) for every non-blank line."""
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            yield number, json.loads(text), None
        except ValueError as exc:
            yield number, None, f"invalid JSON: {exc}"


def _batches(
    items: Iterator[tuple[int, Any, str | None]], size: int
) -> Iterator[list[tuple[int, Any, str | None]]]:
    batch: list[tuple[int, Any, str | None]] = []
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


def ingest_lines(
    db: Database,
    lines: Iterable[str],
    *,
    batch_size: int = 500,
    policy: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Ingest JSONL lines in batches of ``batch_size`` (one transaction each); see the module docstring."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch size must be between 1 and {MAX_BATCH}, got {batch_size}")
    summary = IngestSummary()
    for batch in _batches(read_jsonl(lines), batch_size):
        summary.lines += len(batch)
        summary.rejected += [Rejected(n, why) for n, _, why in batch if why is not None]
        good = [(n, item) for n, item, why in batch if why is None]
        if good:
            payload = json.dumps([item for _, item in good])
            rows = _with_retries(partial(db.call, INGEST_BATCH, (payload, policy)))
            for row in rows:
                line = good[row["item"] - 1][0]
                status = row["status"]
                if status == "created":
                    summary.created += 1
                    summary.linked += row["linked_entities"]
                    summary.queued += row["queued_mentions"]
                elif status == "duplicate":
                    summary.duplicates += 1
                else:
                    summary.rejected.append(Rejected(line, row["reason"]))
        if progress:
            progress(len(batch))
    summary.rejected.sort(key=lambda r: r.line)
    return summary


def ingest_file(db: Database, path: Path, **kwargs: Any) -> IngestSummary:
    with path.open(encoding="utf-8", errors="replace") as handle:
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
