"""CostTracker: a bounded in-memory buffer of cost records, flushed in batches through record_costs.

- ``record()`` accepts a record (the acknowledgement); when the buffer is full it blocks up to
  ``block_timeout`` and then spools, or spools at once with ``when_full="spool"``: never drops.
- A timer thread flushes every ``flush_interval`` seconds, and sooner when ``batch_size`` records wait.
  Flushes are serialised by one lock: one flush at a time.
- When the database is unreachable the batch (and everything buffered) is appended to a local spool file
  (JSON lines, fsync'd) and the next successful flush, or the next start, replays it. Replays are safe:
  every record carries an idempotency key and record_costs skips the keys it already has.
- ``close()``: stop the timer, wait for the flush in flight, flush the rest (spooling what cannot be written),
  and only then may the caller close the pool. A pool closed too early is an outage like any other: the rest
  goes to the spool, and close() does not raise (the seed's "pool after end" error cannot surface).
- SIGTERM (``install_signal_handlers``) raises SystemExit in the main thread; the ``with`` block or the
  atexit hook then runs close(). A batch interrupted mid-flush is put back, never lost.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from harness import metrics
from harness.db import Database
from harness.errors import Unavailable
from harness.ledger import CostRecord, Ledger

log = logging.getLogger("sigledger.cost_tracker")


class TrackerClosed(RuntimeError):
    """record() after close()."""


class CostTracker:
    def __init__(
        self,
        db: Database,
        spool_path: str | os.PathLike[str],
        *,
        capacity: int = 10000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        when_full: str = "block",
        block_timeout: float = 30.0,
    ) -> None:
        if when_full not in ("block", "spool"):
            raise ValueError(f"when_full must be block or spool, got {when_full!r}")
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be positive")
        self.ledger = Ledger(db)
        self.spool_path = Path(spool_path)
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.when_full = when_full
        self.block_timeout = block_timeout
        self._buf: collections.deque[CostRecord] = collections.deque()
        # RLock: a SIGTERM handler may run on the main thread while it is inside record()
        self._cond = threading.Condition(threading.RLock())
        self._flush_lock = threading.Lock()
        self._spool_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._timer: threading.Thread | None = None
        self._closed = False
        self._started = False
        self.stats: collections.Counter[str] = collections.Counter()

    # lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> CostTracker:
        """Replay what a previous run spooled (if the database answers), then start the flush timer."""
        if self._started:
            return self
        self._started = True
        self.replay()
        self._timer = threading.Thread(target=self._run_timer, name="cost-tracker-flush", daemon=True)
        self._timer.start()
        return self

    def __enter__(self) -> CostTracker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the timer, wait for the flush in flight, flush the rest. Idempotent; never raises on an outage."""
        with self._cond:
            if self._closed:
                return
            self._closed = True  # no new records from here on
            self._cond.notify_all()
        self._stopping.set()
        self._wake.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()
        self.flush()  # takes the flush lock: waits for a flush in flight first
        log.info("cost tracker closed: %s", dict(self.stats))

    def install_signal_handlers(self) -> None:
        """SIGTERM -> SystemExit in the main thread, and close() at interpreter exit (the graceful path)."""

        def on_term(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)
        atexit.register(self.close)

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        with self._cond:
            return len(self._buf)

    # recording ------------------------------------------------------------------------------------------------
    def record(self, rec: CostRecord) -> None:
        """Accept one record. Blocks while the buffer is full (then spools after block_timeout); never drops."""
        with self._cond:
            if self._closed:
                raise TrackerClosed("CostTracker is closed")
            if len(self._buf) >= self.capacity:
                if self.when_full == "block":
                    self._wake.set()
                    deadline = time.monotonic() + self.block_timeout
                    while len(self._buf) >= self.capacity and not self._closed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    if self._closed:
                        raise TrackerClosed("CostTracker closed while waiting for room")
                if len(self._buf) >= self.capacity:
                    self.stats["spooled_when_full"] += 1
                    self._spool([rec])
                    return
            self._buf.append(rec)
            self.stats["accepted"] += 1
            metrics.COST_BUFFERED.set(len(self._buf))
            if len(self._buf) >= self.batch_size:
                self._wake.set()

    # flushing -------------------------------------------------------------------------------------------------
    def _run_timer(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.flush()
                if self._spool_files():
                    self.replay()
            except Exception:  # the timer must survive anything; the records are still buffered or spooled
                log.exception("cost tracker flush failed")

    def flush(self) -> int:
        """Write everything buffered, batch by batch; on an outage spool the rest. Returns rows inserted."""
        inserted = 0
        with self._flush_lock:
            while True:
                with self._cond:
                    if not self._buf:
                        return inserted
                    batch = [self._buf.popleft() for _ in range(min(self.batch_size, len(self._buf)))]
                    metrics.COST_BUFFERED.set(len(self._buf))
                    self._cond.notify_all()  # room for blocked writers
                try:
                    started = time.monotonic()
                    result = self.ledger.record_costs([r.to_json() for r in batch])
                    elapsed = time.monotonic() - started
                    self.stats["flush_seconds_total_ms"] += int(elapsed * 1000)
                    metrics.COST_FLUSH_SECONDS.observe(elapsed)
                except Unavailable as exc:
                    log.warning("database unavailable (%s): spooling %d+ records", exc, len(batch))
                    self._spool_everything(batch)
                    return inserted
                except BaseException:
                    # SIGTERM (SystemExit) or a bug mid-flush: put the batch back in front, lose nothing
                    with self._cond:
                        self._buf.extendleft(reversed(batch))
                    raise
                inserted += result.inserted
                self._count(result.inserted, result.duplicates, result.quarantined)
                self.stats["flushed"] += result.inserted
                self.stats["duplicates"] += result.duplicates
                self.stats["quarantined"] += result.quarantined
                self.stats["batches"] += 1

    def _spool_everything(self, batch: list[CostRecord]) -> None:
        with self._cond:
            rest = list(self._buf)
            self._buf.clear()
            self._cond.notify_all()
        self._spool(batch + rest)

    # spool ----------------------------------------------------------------------------------------------------
    def _spool(self, records: list[CostRecord]) -> None:
        """Append records as JSON lines and fsync: once this returns they survive a SIGKILL."""
        data = "".join(json.dumps(r.to_json(), default=str) + "\n" for r in records).encode()
        with self._spool_lock:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.spool_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        self.stats["spooled"] += len(records)
        metrics.COST_RECORDS.labels(outcome="spooled").inc(len(records))
        metrics.COST_SPOOLED.inc(len(records))

    def _spool_files(self) -> list[Path]:
        pattern = self.spool_path.name + ".replay-*"
        files = sorted(self.spool_path.parent.glob(pattern)) if self.spool_path.parent.exists() else []
        if self.spool_path.exists() and self.spool_path.stat().st_size > 0:
            files.append(self.spool_path)
        return files

    def replay(self) -> int:
        """Send spooled records to the database; a file is deleted only when all of it is in. Returns inserted."""
        inserted = 0
        with self._flush_lock:
            with self._spool_lock:
                # new spooling goes to a fresh file while we replay this one
                if self.spool_path.exists() and self.spool_path.stat().st_size > 0:
                    self.spool_path.rename(
                        self.spool_path.with_name(
                            f"{self.spool_path.name}.replay-{time.time_ns()}-{uuid.uuid4().hex[:6]}"
                        )
                    )
            for path in sorted(self.spool_path.parent.glob(self.spool_path.name + ".replay-*")):
                records = self._read_spool(path)
                try:
                    for i in range(0, len(records), self.batch_size):
                        result = self.ledger.record_costs(records[i : i + self.batch_size])
                        inserted += result.inserted
                        metrics.COST_RECORDS.labels(outcome="replayed").inc(result.inserted)
                        self._count(0, result.duplicates, result.quarantined)
                        self.stats["replayed"] += result.inserted
                        self.stats["duplicates"] += result.duplicates
                        self.stats["quarantined"] += result.quarantined
                except Unavailable as exc:
                    log.warning("replay of %s postponed: %s", path, exc)
                    return inserted
                path.unlink()
            metrics.COST_SPOOLED.set(self._spooled_lines())
        return inserted

    def _spooled_lines(self) -> int:
        total = 0
        for path in self._spool_files():
            with path.open("rb") as fh:
                total += sum(1 for _ in fh)
        return total

    @staticmethod
    def _count(inserted: int, duplicates: int, quarantined: int) -> None:
        metrics.COST_RECORDS.labels(outcome="inserted").inc(inserted)
        metrics.COST_RECORDS.labels(outcome="duplicate").inc(duplicates)
        metrics.COST_RECORDS.labels(outcome="quarantined").inc(quarantined)

    @staticmethod
    def _read_spool(path: Path) -> list[dict[str, Any]]:
        records = []
        with path.open("rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    # a write cut by a crash before its fsync: never acknowledged
                    log.warning("%s:%d: incomplete last line ignored", path, n)
                    break
                records.append(json.loads(line))
        return records
