"""CostTracker: a bounded in-memory buffer of cost records, flushed in batches through record_costs.

- ``record()`` validates, then accepts a record (the acknowledgement); when the buffer is full it blocks up to
  ``block_timeout`` and then spools, or spools at once with ``when_full="spool"``: never drops. A record the
  database could never store as JSON (a NUL character or lone surrogate in any string, keys included; a NaN or
  infinite number; a value that is not JSON) is refused at the call with ``InvalidInput`` naming the field, and
  nothing is buffered.
- A batch that the database refuses as a whole for a reason other than an outage or a retryable conflict (for
  instance 22P05, a NUL in a record mutated after it was accepted, or an old spool line) is bisected: the halves
  are written on their own, and a record that still fails alone is appended, with the error, to the dead-letter
  file ``<spool>.rejected.jsonl`` (JSON lines, fsync'd). Nothing loops, nothing is dropped. Replay does the same.
- A timer thread flushes every ``flush_interval`` seconds, and sooner when ``batch_size`` records wait.
  Flushes are serialised by one lock: one flush at a time.
- When the database is unreachable the batch (and everything buffered) is appended to a local spool file
  (JSON lines, fsync'd) and the next successful flush, or the next start, replays it. Replays are safe:
  every record carries an idempotency key and record_costs skips the keys it already has.
- ``close()``: stop the timer, wait for the flush in flight, flush the rest (spooling what cannot be written),
  and only then may the caller close the pool. A pool closed too early is an outage like any other: the rest
  goes to the spool, and close() does not raise (the seed's "pool after end" error cannot surface). When the
  final flush fails for any other reason, close() spools whatever is still buffered and logs the error (it does
  not raise: the records are safe in the spool and the next start replays them); only SystemExit and
  KeyboardInterrupt are re-raised, after the spooling.
- SIGTERM (``install_signal_handlers``) raises SystemExit in the main thread; the ``with`` block or the
  atexit hook then runs close(). A batch interrupted mid-flush is put back, never lost.
"""

from __future__ import annotations

import atexit
import collections
import datetime as dt
import decimal
import json
import logging
import math
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from sigledger.core import metrics
from sigledger.core.db import Database
from sigledger.core.errors import InvalidInput, Retryable, Unavailable
from sigledger.ledger.client import BatchResult, CostRecord, Ledger

log = logging.getLogger("sigledger.cost_tracker")


class TrackerClosed(RuntimeError):
    """record() after close()."""


_JSON_SCALARS = (bool, int, decimal.Decimal, dt.datetime, dt.date, dt.time, uuid.UUID)


def _check_str(value: str, where: str) -> None:
    if "\x00" in value:
        raise InvalidInput(f"{where}: contains a NUL character (\\u0000), which PostgreSQL cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{where}: not valid Unicode ({exc.reason})") from None


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    """Raise InvalidInput unless ``value`` is JSON that jsonb accepts (Decimal, datetime and UUID as strings)."""
    if depth > 100:
        raise InvalidInput(f"{where}: nested too deeply")
    if value is None or isinstance(value, _JSON_SCALARS):
        if isinstance(value, decimal.Decimal) and not value.is_finite():
            raise InvalidInput(f"{where}: {value} is not a finite number")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{where}: {value} is not a finite number")
        return
    if isinstance(value, str):
        _check_str(value, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                _check_str(key, f"{where}: key {key!r}")
            elif isinstance(key, float) and not math.isfinite(key):
                raise InvalidInput(f"{where}: key {key!r} is not a finite number")
            elif not (key is None or isinstance(key, (int, float))):
                raise InvalidInput(f"{where}: key {key!r} is not a JSON object key")
            _check_json(item, f"{where}.{key}", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
        return
    raise InvalidInput(f"{where}: a {type(value).__name__} is not JSON")


def validate_record(rec: CostRecord) -> None:
    """What record() checks: everything the database could never accept as JSON raises InvalidInput here."""
    if not isinstance(rec, CostRecord):
        raise InvalidInput(f"record: expected a CostRecord, got a {type(rec).__name__}")
    for name in ("idempotency_key", "agent_id", "model", "provider"):
        value = getattr(rec, name)
        if not isinstance(value, str):
            raise InvalidInput(f"{name}: expected a string, got a {type(value).__name__}")
        _check_str(value, name)
    for name in ("input_tokens", "output_tokens"):
        value = getattr(rec, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name}: expected an integer, got a {type(value).__name__}")
    if rec.cost_usd is not None:
        if not isinstance(rec.cost_usd, (decimal.Decimal, int)) or isinstance(rec.cost_usd, bool):
            raise InvalidInput(f"cost_usd: expected a Decimal, got a {type(rec.cost_usd).__name__}")
        if isinstance(rec.cost_usd, decimal.Decimal) and not rec.cost_usd.is_finite():
            raise InvalidInput(f"cost_usd: {rec.cost_usd} is not a finite number")
    if not isinstance(rec.created_at, dt.datetime):
        raise InvalidInput(f"created_at: expected a datetime, got a {type(rec.created_at).__name__}")
    if not isinstance(rec.metadata, dict):
        raise InvalidInput(f"metadata: expected a dict, got a {type(rec.metadata).__name__}")
    _check_json(rec.metadata, "metadata")


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
        self.rejected_path = self.spool_path.with_name(self.spool_path.name + ".rejected.jsonl")
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
        """Stop the timer, wait for the flush in flight, flush the rest. Idempotent.

        Whatever the final flush cannot write is spooled. An outage is logged as a warning, any other failure
        with its traceback; neither raises. SystemExit and KeyboardInterrupt are re-raised after the spooling.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True  # no new records from here on
            self._cond.notify_all()
        self._stopping.set()
        self._wake.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()
        try:
            self.flush()  # takes the flush lock: waits for a flush in flight first
        except BaseException as exc:
            with self._flush_lock:  # nothing else flushes now; the failed batch is back in the buffer
                with self._cond:
                    rest = list(self._buf)
                    self._buf.clear()
                    metrics.COST_BUFFERED.set(0)
                if rest:
                    self._spool(rest)
            if not isinstance(exc, Exception):
                raise
            log.exception(
                "cost tracker: final flush failed; %d records spooled for the next start", len(rest)
            )
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
        """Accept one record. Blocks while the buffer is full (then spools after block_timeout); never drops.

        Raises InvalidInput, naming the field, for a record the database could never store; nothing is kept.
        """
        try:
            validate_record(rec)
        except InvalidInput:
            self.stats["invalid"] += 1
            metrics.COST_RECORDS.labels(outcome="invalid").inc()
            raise
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
                    result = self._write([r.to_json() for r in batch])
                    elapsed = time.monotonic() - started
                    self.stats["flush_seconds_total_ms"] += int(elapsed * 1000)
                    metrics.COST_FLUSH_SECONDS.observe(elapsed)
                except Unavailable as exc:
                    log.warning("database unavailable (%s): spooling %d+ records", exc, len(batch))
                    self._spool_everything(batch)
                    return inserted
                except BaseException:
                    # SIGTERM (SystemExit), a retryable conflict, a dead-letter file that cannot be written, or a
                    # bug mid-flush: put the batch back in front, lose nothing (record_costs is idempotent)
                    with self._cond:
                        self._buf.extendleft(reversed(batch))
                    raise
                inserted += result.inserted
                self._count(result.inserted, result.duplicates, result.quarantined)
                self.stats["flushed"] += result.inserted
                self.stats["duplicates"] += result.duplicates
                self.stats["quarantined"] += result.quarantined
                self.stats["batches"] += 1

    def _write(self, batch: list[dict[str, Any]]) -> BatchResult:
        """record_costs; a batch refused as a whole (not an outage, not retryable) is bisected, and a record that
        fails alone goes to the dead-letter file. At most 2n-1 calls; Unavailable and Retryable propagate (what
        was written before them is skipped by its idempotency key when the batch is sent again)."""
        try:
            return self.ledger.record_costs(batch)
        except (Unavailable, Retryable):
            raise
        except Exception as exc:
            if len(batch) == 1:
                self._reject(batch[0], exc)
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

    def _reject(self, record: dict[str, Any], exc: Exception) -> None:
        """Append one record the database refuses on its own to the dead-letter file, with the error; fsync."""
        entry = {
            "rejected_at": dt.datetime.now(dt.UTC).isoformat(),
            "error": type(exc).__name__,
            "sqlstate": getattr(exc, "sqlstate", None),
            "message": str(exc),
            "record": record,
        }
        self._append(self.rejected_path, (json.dumps(entry, default=str) + "\n").encode())
        log.error(
            "cost record %s rejected by the database (%s: %s): moved to %s",
            record.get("idempotency_key"),
            type(exc).__name__,
            exc,
            self.rejected_path,
        )
        self.stats["rejected"] += 1
        metrics.COST_RECORDS.labels(outcome="rejected").inc()

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
        self._append(self.spool_path, data)
        self.stats["spooled"] += len(records)
        metrics.COST_RECORDS.labels(outcome="spooled").inc(len(records))
        metrics.COST_SPOOLED.inc(len(records))

    def _append(self, path: Path, data: bytes) -> None:
        with self._spool_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)

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
                        result = self._write(records[i : i + self.batch_size])
                        inserted += result.inserted
                        metrics.COST_RECORDS.labels(outcome="replayed").inc(result.inserted)
                        self._count(0, result.duplicates, result.quarantined)
                        self.stats["replayed"] += result.inserted
                        self.stats["duplicates"] += result.duplicates
                        self.stats["quarantined"] += result.quarantined
                except (Unavailable, Retryable) as exc:
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
