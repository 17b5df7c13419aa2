# Generated from sigledger/ledger/atracker.py by tools/async_to_sync.py: do not edit, change the async source
# and run `make sync-gen`.
"""CostTracker: cost records journaled on local disk, then written to the ledger in batches through record_costs.

- ``record()`` validates (``InvalidInput`` naming the field, nothing kept), appends the record to the journal
  (ledger/journal.py) and only then returns: that is the acknowledgement. With ``durability="process"`` (the
  default) the record survives the death of the process, SIGKILL included; with ``"machine"`` it also waits
  for an fsync shared with the records written meanwhile (group commit). A journal write that fails raises
  ``JournalError``: that record is not acknowledged, the earlier ones are kept.
- A timer flushes every ``flush_interval`` seconds, sooner when ``batch_size`` records wait; one flush at a
  time. A batch the database refuses as a whole for its data (InvalidInput, NotFound) is bisected, and a record
  that fails alone goes to the dead-letter file ``<spool>/rejected.jsonl`` with the SQLSTATE and the primary
  message. Any other error (an outage, a read-only server after a failover, disk full, an unmapped SQLSTATE) is
  not the records' fault: they are never dead-lettered for it. Nothing loops or drops.
- While the database is unreachable or cannot write, the records stay in the journal (memory is freed: they are replayed from
  the file); each flush then retries. A start replays what dead processes left in the folder (segments whose
  lock died with them); a corrupt line is dead-lettered with its line number, the rest replays.
- ``close()``: stop the timer, wait for the flush in flight, flush the rest; what cannot be written stays in
  the journal for the next start. It raises ``JournalError`` only when it holds acknowledged records that are
  neither in the database nor on disk (the spool folder was removed while the database was down): it logs them.
- Signals are opt-in: ``install_signal_handlers()`` chains to a handler installed before it (uvicorn's), and
  otherwise turns SIGTERM into SystemExit so that the ``with`` block closes the tracker.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import signal
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from sigledger.core import _compat as aio
from sigledger.core import metrics
from sigledger.core.db import Database
from sigledger.core.errors import DATA_ERRORS, InvalidInput, JournalError, primary_message
from sigledger.ledger.client import Ledger
from sigledger.ledger.journal import Journal, Segment
from sigledger.ledger.records import BatchResult, CostRecord, validate_record
from sigledger.ledger.replay import parse_segment, rejection, server_trouble

log = logging.getLogger("sigledger.cost_tracker")


class TrackerClosed(RuntimeError):
    """record() after close() (or before start())."""


def _line(rec: dict[str, Any]) -> bytes:
    return (json.dumps(rec, default=str) + "\n").encode()


class CostTracker:
    def __init__(
        self,
        db: Database,
        spool: str | os.PathLike[str],
        *,
        durability: str = "process",
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
        self.journal = Journal(spool, durability=durability)
        self.spool_path: Path = self.journal.folder
        self.rejected_path: Path = self.journal.rejected_path
        self.durability = durability
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.when_full = when_full
        self.block_timeout = block_timeout
        self._buf: collections.deque[tuple[Segment, dict[str, Any]]] = collections.deque()
        self._cond = aio.Condition()  # the memory buffer
        self._flush_lock = aio.Lock()  # one flush (or replay) at a time
        self._sync_cond = aio.Condition()  # group commit: one fsync at a time, the others wait for it
        self._syncing = False
        self._wake = aio.Event()
        self._stopping = False
        self._timer: aio.Worker | None = None
        self._closed = False
        self._started = False
        self.stats: collections.Counter[str] = collections.Counter()

    # lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> CostTracker:
        """Open the journal (JournalError when the folder is unusable), replay what dead processes left in it
        (if the database answers), then start the flush timer."""
        if self._started:
            return self
        self.journal.open()
        self._started = True
        self.replay()
        self._timer = aio.spawn(self._run_timer, "cost-tracker-flush")
        return self

    def __enter__(self) -> CostTracker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the timer, wait for the flush in flight, flush the rest; idempotent. What the database cannot
        take now stays in the journal for the next start."""
        with self._cond:
            if self._closed:
                return
            self._closed = True  # no new records from here on
            self._cond.notify_all()
        self._stopping = True
        self._wake.set()
        if self._timer is not None and not aio.is_current(self._timer):
            aio.join(self._timer)
        try:
            self.flush()
        except Exception:
            log.exception(
                "cost tracker: final flush failed; the records stay in %s for the next start", self.spool_path
            )
        finally:
            orphaned = [rec for seg, rec in self._buf if not seg.alive]
            self.journal.close()
        log.info("cost tracker closed: %s", dict(self.stats))
        if orphaned:
            for rec in orphaned:
                log.error("cost record neither written nor journaled: %s", json.dumps(rec, default=str))
            raise JournalError(
                f"{len(orphaned)} acknowledged cost records could be written neither to the database nor to the"
                f" journal (the spool folder {self.spool_path} was removed); they are in the log above"
            )

    def install_signal_handlers(self) -> None:
        """Opt-in. SIGTERM: a handler installed before this one (uvicorn's, a framework's) is called and stays in
        charge of the shutdown (close the tracker in your shutdown hook); without one, SIGTERM raises SystemExit
        in the main thread so that ``with`` blocks run. Either way nothing acknowledged is lost: the journal
        holds it."""
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: FrameType | None) -> None:
            if callable(previous):
                previous(signum, frame)
                return
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)
        if not aio.ASYNC:
            atexit.register(self.close)

    @property
    def closed(self) -> bool:
        return self._closed

    def journal_files(self) -> list[Path]:
        """Journal files in the spool folder that still hold records (after close(): what the next start replays)."""
        return self.journal.files()

    def pending(self) -> int:
        """Records in memory waiting for a flush (the journal also holds the ones a replay will send)."""
        return len(self._buf)

    # recording ------------------------------------------------------------------------------------------------
    def record(self, rec: CostRecord) -> None:
        """Accept one record: validated, journaled, then acknowledged (returns). Never drops.

        InvalidInput (naming the field) for a record the database could never store; JournalError when the
        journal cannot take it; TrackerClosed after close(). In each case the record was not acknowledged."""
        try:
            validate_record(rec)
        except InvalidInput:
            self.stats["invalid"] += 1
            metrics.COST_RECORDS.labels(outcome="invalid").inc()
            raise
        data = rec.to_json()
        with self._cond:
            if self._closed or not self._started:
                raise TrackerClosed("CostTracker is closed" if self._closed else "CostTracker.start() first")
            if len(self._buf) >= self.capacity:
                self._make_room()
            seg, seq = self._append(_line(data))
            self._buf.append((seg, data))
            self.stats["accepted"] += 1
            metrics.COST_BUFFERED.set(len(self._buf))
            if len(self._buf) >= self.batch_size:
                self._wake.set()
        if self.durability == "machine":
            self._sync_upto(seq)

    def _make_room(self) -> None:  # with self._cond held
        if self.when_full == "block":
            self._wake.set()
            deadline = time.monotonic() + self.block_timeout
            while len(self._buf) >= self.capacity and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or not aio.wait_condition(self._cond, left):
                    break
            if self._closed:
                raise TrackerClosed("CostTracker closed while waiting for room")
        if len(self._buf) >= self.capacity:
            self._to_disk("buffer full")

    def _to_disk(self, why: str) -> None:  # with self._cond held
        """Free the memory: every record held is in the journal, which a replay reads from now on."""
        self.journal.seal_to_disk()
        n = len(self._buf)
        self._buf.clear()
        self._cond.notify_all()
        metrics.COST_BUFFERED.set(0)
        self.stats["spooled"] += n
        metrics.COST_RECORDS.labels(outcome="spooled").inc(n)
        metrics.COST_SPOOLED.inc(n)
        log.warning("cost tracker: %s, %d records left to the journal for replay", why, n)

    def _append(self, line: bytes) -> tuple[Segment, int]:  # with self._cond held
        try:
            return self.journal.append(line)
        except JournalError:
            active = self.journal.active
            if active is None or active.alive:
                raise
        # our segment was unlinked (the folder removed): a new one, with what we hold journaled again
        self.journal.renew()
        self._rejournal()
        return self.journal.append(line)

    def _rejournal(self) -> None:  # with self._cond held
        for i, (seg, rec) in enumerate(self._buf):
            if not seg.alive:
                self._buf[i] = (self.journal.append(_line(rec))[0], rec)

    def _sync_upto(self, seq: int) -> None:
        """Group commit: wait until an fsync covers record ``seq``; the first waiter runs it for everyone."""
        while True:
            with self._sync_cond:
                if self.journal.synced >= seq:
                    return
                if self._syncing:
                    self._sync_cond.wait()
                    continue
                self._syncing = True
            try:
                aio.to_thread(self.journal.sync)
            except OSError as exc:
                raise JournalError(
                    f"cannot fsync the journal in {self.spool_path}: {exc.strerror or exc}"
                ) from exc
            finally:
                with self._sync_cond:
                    self._syncing = False
                    self._sync_cond.notify_all()

    # flushing -------------------------------------------------------------------------------------------------
    def _run_timer(self) -> None:
        while not self._stopping:
            aio.wait_event(self._wake, self.flush_interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.flush()
            except Exception:  # the timer must survive anything; the records are in the journal
                log.exception("cost tracker flush failed")

    def flush(self) -> int:
        """Write what memory holds, batch by batch, then replay the journal's disk segments. Returns rows
        inserted. During an outage the records stay in the journal and memory is freed."""
        inserted = 0
        with self._flush_lock:
            while True:
                with self._cond:
                    if not self._buf:
                        break
                    batch = [self._buf.popleft() for _ in range(min(self.batch_size, len(self._buf)))]
                    metrics.COST_BUFFERED.set(len(self._buf))
                    self._cond.notify_all()  # room for blocked writers
                try:
                    started = time.monotonic()
                    result = self._write([rec for _, rec in batch])
                    metrics.COST_FLUSH_SECONDS.observe(time.monotonic() - started)
                except Exception as exc:
                    with self._cond:
                        self._put_back(batch)
                        if not server_trouble(exc):
                            raise  # a dead-letter file that cannot be written: the batch is back in front
                        # an outage, a read-only server (25006), disk full (53100), any error that is not about
                        # the records: they stay in the journal and memory is freed; later flushes replay them
                        try:
                            self._to_disk(f"the database cannot take the batch now ({primary_message(exc)})")
                        except JournalError:
                            log.exception("cannot start a new journal segment: the records stay in memory")
                    return inserted
                except BaseException:
                    # SIGTERM (SystemExit), a cancellation: the batch goes back in front (record_costs is
                    # idempotent)
                    with self._cond:
                        self._put_back(batch)
                    raise
                self.journal.committed(collections.Counter(seg for seg, _ in batch))
                inserted += result.inserted
                self._count(result, "flushed")
            inserted += self._replay_disk()
        return inserted

    def _put_back(self, batch: list[tuple[Segment, dict[str, Any]]]) -> None:  # with self._cond held
        self._buf.extendleft(reversed([(seg, rec) for seg, rec in batch if not seg.disk_only]))

    def replay(self) -> int:
        """Send what the journal holds on disk (ours and dead processes') to the database. Returns inserted."""
        with self._flush_lock:
            return self._replay_disk()

    def _replay_disk(self) -> int:  # with the flush lock held
        inserted = 0
        for seg in self.journal.disk_segments():
            try:
                inserted += self._replay_segment(seg)
            except Exception as exc:
                if not server_trouble(exc):
                    raise
                log.warning("replay of %s postponed: %s", seg.path, primary_message(exc))
                return inserted
            self.journal.release(seg)
        metrics.COST_SPOOLED.set(0)  # everything left to the journal is in the database now
        return inserted

    def _replay_segment(self, seg: Segment) -> int:
        records, bad = aio.to_thread(parse_segment, seg)
        for entry in bad:
            self._dead_letter(entry)
        inserted = 0
        for i in range(0, len(records), self.batch_size):
            result = self._write(records[i : i + self.batch_size])
            inserted += result.inserted
            self._count(result, "replayed")
        return inserted

    def _write(self, batch: list[dict[str, Any]]) -> BatchResult:
        """record_costs; a batch refused as a whole for its data (InvalidInput, NotFound: DATA_ERRORS) is bisected,
        and a record that fails alone goes to the dead-letter file. At most 2n-1 calls. Anything else (an outage, a
        read-only server, a retryable conflict, an unmapped error) propagates: the records are not the cause, so
        they stay in the journal (what was written before is skipped by its idempotency key when sent again)."""
        try:
            return self.ledger.record_costs(batch)
        except DATA_ERRORS as exc:
            if len(batch) == 1:
                self._dead_letter(rejection(batch[0], exc))
                return BatchResult(0, 0, 0)
            log.warning("record_costs refused a batch of %d (%s): bisecting", len(batch), exc)
            mid = len(batch) // 2
            left = self._write(batch[:mid])
            right = self._write(batch[mid:])
            return BatchResult(
                left.inserted + right.inserted,
                left.duplicates + right.duplicates,
                left.quarantined + right.quarantined,
            )

    def _dead_letter(self, entry: dict[str, Any]) -> None:
        aio.to_thread(self.journal.dead_letter, entry)
        log.error(
            "cost record moved to %s: %s",
            self.rejected_path,
            {k: v for k, v in entry.items() if k != "record"},
        )
        self.stats["rejected"] += 1
        metrics.COST_RECORDS.labels(outcome="rejected").inc()

    def _count(self, result: BatchResult, what: str) -> None:
        self.stats[what] += result.inserted
        self.stats["duplicates"] += result.duplicates
        self.stats["quarantined"] += result.quarantined
        self.stats["batches"] += 1
        metrics.COST_RECORDS.labels(outcome="inserted" if what == "flushed" else what).inc(result.inserted)
        metrics.COST_RECORDS.labels(outcome="duplicate").inc(result.duplicates)
        metrics.COST_RECORDS.labels(outcome="quarantined").inc(result.quarantined)
