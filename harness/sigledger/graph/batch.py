"""What a sync worker is configured with and reports, and the Postgres rows it reads, as Python values."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .sink import Snapshot, Stamp


@dataclass(frozen=True)
class WorkerConfig:
    batch_size: int = 500
    max_attempts: int = 8
    base_delay: float = 1.0  # seconds, first retry of a failing row (then doubling, with jitter)
    max_delay: float = 600.0
    poll_interval: float = 1.0  # fallback when a notification is lost
    outage_backoff_max: float = 15.0
    identity_backoff_max: float = 60.0  # a graph of another database or epoch: retried this rarely (follow)
    once_outage_retries: int = 3  # --once gives up (non-zero exit) after this many failed tries in a row
    # Tombstones of deleted aggregates are collected once no snapshot older than them can be written: the
    # fence is raised to a version this worker read at least tombstone_ttl seconds ago (docs/graph.md).
    tombstone_ttl: float = 600.0
    tombstone_interval: float = 60.0
    # The server ends a batch's Neo4j transaction after this long; collection waits twice as long after
    # raising the fence before it drops the tombstones below it (tombstone_grace; tests shorten it).
    write_timeout: float = 120.0
    tombstone_grace: float | None = None

    @property
    def grace(self) -> float:
        return 2 * self.write_timeout if self.tombstone_grace is None else self.tombstone_grace


@dataclass
class BatchResult:
    claimed: int = 0
    acked: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0
    lags: list[float] = field(default_factory=list)  # created_at -> Neo4j commit, seconds, per acked row

    def __iadd__(self, other: BatchResult) -> BatchResult:
        self.claimed += other.claimed
        self.acked += other.acked
        self.failed += other.failed
        self.dead += other.dead
        self.deferred += other.deferred
        self.lags.extend(other.lags)
        return self


def snapshot_of(row: Any) -> Snapshot:
    """A row of sigledger._graph_snapshot."""
    return Snapshot(
        aggregate_type=row.aggregate_type,
        aggregate_id=str(row.aggregate_id),
        state=row.state,
        version=int(row.version),
        props=row.props,
        links=tuple(str(x) for x in (row.links or ())),
        winner_id=str(row.winner_id) if row.winner_id is not None else None,
        error=row.error,
    )


def stamp_of(row: Any) -> Stamp:
    """A row of sigledger._graph_identity."""
    return Stamp(database_id=str(row.database_id), epoch=int(row.epoch), written=bool(row.written))


class FenceClock:
    """Remembers (when, version) of this worker's snapshots, to pick a fence for tombstone collection: a
    version read at least ``ttl`` seconds ago. Any write still to come with an older version was read even
    earlier; the fence refuses it (its rows stay in the outbox and are projected again)."""

    def __init__(self, ttl: float, interval: float) -> None:
        self.ttl = ttl
        self.interval = interval
        self._samples: deque[tuple[float, int]] = deque()
        self._next_collection = time.monotonic() + interval
        self._fence: int | None = None

    def saw(self, version: int) -> None:
        now = time.monotonic()
        if not self._samples or now - self._samples[-1][0] >= min(self.interval, self.ttl) / 2:
            self._samples.append((now, version))

    def due(self) -> int | None:
        """The fence for a collection round now (the newest version read at least ``ttl`` ago; the last one
        again when nothing newer is old enough), or None (not yet time, or nothing read long enough ago)."""
        now = time.monotonic()
        if now < self._next_collection:
            return None
        self._next_collection = now + self.interval
        while self._samples and now - self._samples[0][0] >= self.ttl:
            self._fence = self._samples.popleft()[1]
        return self._fence
