"""The CostTracker's local journal: every record is appended here before ``record()`` returns (issue 14).

A spool folder holds segment files ``<pid>-<ns>-<rand>.journal`` (JSON lines), each owned by one live tracker
that holds an exclusive ``flock`` on it for as long as it has it open. A segment whose owner died (SIGKILL, a
crash) has no lock any more: any tracker sharing the folder may claim it (a non-blocking flock), replay it and
delete it. Two processes that start together never replay the same file twice, and never fail on the other's
unlink: the loser of the lock skips the file, and a file unlinked between open and lock is recognised by its
inode (``_claim``). A new segment is created under a temporary name and renamed once locked, so nobody takes a
live segment for an orphan.

Durability (the caller's choice, docs/cost-tracker.md):
- ``process`` (default): the line is written to the file (the OS page cache) before ``record()`` returns; it
  survives the death of the process (SIGKILL included), not a power loss.
- ``machine``: ``record()`` also waits for an fsync covering its line; concurrent records share one fsync
  (group commit, driven by the tracker: ``sync()`` fsyncs everything written so far). Only ``sync()`` and the
  dead-letter file fsync, and the async tracker runs both in a thread: a rotation (in ``append()``, on the
  caller's thread) leaves the old segment and the folder to the next ``sync()``, which fsyncs them before it
  counts the records as synced.

Records leave the journal only after the database committed them: a segment's ``pending`` count falls as its
records are written; a sealed segment at zero is deleted, the active one truncated. A crash between the commit
and the deletion makes the next start replay rows the database already has, which their idempotency keys skip.

A write that fails (disk full, file-size limit, I/O error) truncates the segment back to its last complete line
and raises ``JournalError``: that record is not acknowledged, the ones before it stay. A segment found unlinked
(the folder removed under us) raises too; the tracker then re-journals what it holds into a new segment when
the folder can be created again.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sigledger.core.errors import JournalError

log = logging.getLogger("sigledger.cost_tracker")

DURABILITY = ("process", "machine")
SUFFIX = ".journal"
REJECTED = "rejected.jsonl"


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int
    size: int = 0
    pending: int = 0  # records appended and not yet committed (only counted while the records are in memory)
    disk_only: bool = False  # replayed from the file: memory holds none of its records
    sealed: bool = False  # no longer appended to

    @property
    def alive(self) -> bool:
        """Still linked in the folder (rm -rf of the folder unlinks it while we hold it open)."""
        try:
            return os.fstat(self.fd).st_nlink > 0
        except OSError:
            return False


@dataclass
class Line:
    """One line of a segment: the record, or why it is unreadable."""

    number: int
    raw: bytes
    record: dict[str, Any] | None = None
    error: BaseException | None = None


class Journal:
    def __init__(
        self, folder: str | os.PathLike[str], *, durability: str = "process", segment_bytes: int = 4 << 20
    ):
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}, got {durability!r}")
        self.folder = Path(folder)
        self.durability = durability
        self.segment_bytes = segment_bytes
        self.rejected_path = self.folder / REJECTED
        self._lock = threading.Lock()  # guards the fields below; held for a write, never for an fsync
        self.active: Segment | None = None
        self.sealed: list[Segment] = []  # ours, waiting for their records to be committed
        self.written = 0  # records appended (group commit: the sequence number of the last one)
        self.synced = 0  # records covered by an fsync
        # durability="machine": what the next sync() must fsync besides the active segment. A rotation never
        # fsyncs itself (append() runs on the caller's thread, the event loop's for the async tracker): the old
        # segment and the folder entry of the new one wait here for the group commit's thread
        self._unsynced: list[Segment] = []
        self._folder_changes = 0  # segments created (renamed into the folder) since the folder's last fsync

    # segments -------------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Create the folder (an old single-file spool at its path is kept as a replay file) and a segment."""
        try:
            if self.folder.is_file():
                legacy = self.folder.with_name(f"{self.folder.name}.replay-legacy-{time.time_ns()}")
                self.folder.rename(legacy)
                log.warning("old spool file %s moved to %s for replay", self.folder, legacy)
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(
                f"cannot create the spool folder {self.folder}: {exc.strerror or exc}"
            ) from exc
        with self._lock:
            self.active = self._new_segment()

    def _new_segment(self) -> Segment:  # with the lock held
        name = f"{os.getpid()}-{time.time_ns()}-{uuid.uuid4().hex[:6]}"
        tmp, path = self.folder / f".{name}.tmp", self.folder / f"{name}{SUFFIX}"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise JournalError(
                f"cannot create a journal segment in {self.folder}: {exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live
            os.rename(tmp, path)  # only a locked file carries the name orphan scans look for
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise JournalError(
                f"cannot create a journal segment in {self.folder}: {exc.strerror or exc}"
            ) from exc
        self._folder_changes += 1  # fsynced by the next sync() (durability="machine"), before it counts
        return Segment(path, fd)

    def _sync_folder(self) -> None:
        dfd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _seal(self, disk_only: bool) -> Segment:  # with the lock held; returns the new active segment
        """Start a new segment; the old one waits for its records (or is replayed from disk when disk_only)."""
        old = self.active
        new = self._new_segment()
        if old is not None:
            if self.durability == "machine" and old.size > 0:
                # its records are fsynced by the next sync() before that counts (not here: no fsync on the
                # caller's thread); a segment dropped meanwhile had all its records committed
                self._unsynced.append(old)
            old.sealed, old.disk_only = True, old.disk_only or disk_only
            if old.size == 0 or (old.pending == 0 and not old.disk_only):
                self._drop(old)
            else:
                self.sealed.append(old)
        self.active = new
        return new

    def seal_to_disk(self) -> None:
        """The tracker's memory is full: every segment of ours is left to a replay from disk from now on."""
        with self._lock:
            for seg in self.sealed:
                seg.disk_only = True
            if self.active is not None:
                self.active.disk_only = True
            self._seal(disk_only=True)

    def renew(self) -> None:
        """A new active segment after ours was found unlinked (JournalError while the folder cannot be made).
        Dead segments whose records are in memory are forgotten (the tracker journals those records again);
        dead disk-only ones stay: we read them through our open descriptor."""
        with self._lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise JournalError(
                    f"cannot create the spool folder {self.folder}: {exc.strerror or exc}"
                ) from exc
            new = self._new_segment()
            dead = [s for s in [*self.sealed, *([self.active] if self.active else [])] if not s.alive]
            for seg in dead:
                if seg in self.sealed and seg.disk_only:
                    continue
                if seg in self.sealed:
                    self.sealed.remove(seg)
                os.close(seg.fd)
            self.active = new

    # writing --------------------------------------------------------------------------------------------------
    def append(self, line: bytes) -> tuple[Segment, int]:
        """Append one record's line; returns its segment and sequence number. JournalError: not written."""
        with self._lock:
            seg = self.active
            if seg is None:
                raise JournalError("the journal is closed")
            if not seg.alive:
                raise JournalError(f"journal segment {seg.path} was removed (is the spool folder gone?)")
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(seg.fd, view) :]
            except OSError as exc:
                try:
                    os.ftruncate(seg.fd, seg.size)  # no torn line after the last acknowledged one
                except OSError:
                    log.exception("cannot truncate %s back to its last complete line", seg.path)
                raise JournalError(f"cannot write to the journal {seg.path}: {exc.strerror or exc}") from exc
            seg.size += len(line)
            seg.pending += 1
            self.written += 1
            seq = self.written
            if seg.size >= self.segment_bytes:
                try:
                    self._seal(disk_only=False)
                except JournalError as exc:  # keep writing to the current one; it is as durable
                    log.warning("journal rotation failed, %s keeps growing: %s", seg.path, exc)
            return seg, seq

    def sync(self) -> None:
        """fsync what was written so far (the group commit's leader calls it, in a thread for async callers):
        segments sealed since the last sync (still ours), the folder (the names of new segments), then the active
        segment. Only then does ``synced`` cover the records written up to the call."""
        with self._lock:
            target = self.written
            if self.active is None or target <= self.synced:
                return
            segs, changes = list(self._unsynced), self._folder_changes
            # our own descriptors: rotation or a commit may close a segment's fd meanwhile
            fds = [os.dup(s.fd) for s in segs if s in self.sealed] + [os.dup(self.active.fd)]
        try:
            for fd in fds:
                os.fsync(fd)
            if changes:
                self._sync_folder()
        finally:
            for fd in fds:
                os.close(fd)
        with self._lock:
            self.synced = max(self.synced, target)
            self._unsynced = [s for s in self._unsynced if s not in segs]
            self._folder_changes -= changes

    def committed(self, counts: dict[Segment, int]) -> None:
        """The database committed these records: segments at zero pending leave the journal."""
        with self._lock:
            for seg, n in counts.items():
                if seg.disk_only:
                    continue  # replayed from its file as a whole
                seg.pending -= n
                if seg.pending > 0:
                    continue
                if seg is self.active:
                    if seg.size > 0:
                        self._truncate(seg)
                elif seg in self.sealed:
                    self.sealed.remove(seg)
                    self._drop(seg)

    def _truncate(self, seg: Segment) -> None:
        try:
            os.ftruncate(seg.fd, 0)
            seg.size = 0
        except OSError as exc:
            log.warning("cannot truncate %s: %s", seg.path, exc)

    def _drop(self, seg: Segment) -> None:
        """Delete a segment whose records are all in the database (kept, harmlessly, if it cannot be)."""
        try:
            if seg.alive:
                seg.path.unlink()
        except OSError as exc:
            log.warning(
                "cannot delete %s (its records are in the database; a replay skips them): %s", seg.path, exc
            )
        finally:
            os.close(seg.fd)

    def release(self, seg: Segment) -> None:
        """A disk segment fully replayed: delete it."""
        with self._lock:
            if seg in self.sealed:
                self.sealed.remove(seg)
            self._drop(seg)

    # replay ---------------------------------------------------------------------------------------------------
    def disk_segments(self) -> list[Segment]:
        """Our segments to replay from their files, and the orphans of dead processes, claimed by lock (ours from
        now on: another process skips them; should we die, the lock dies with us)."""
        with self._lock:
            known = {s.path for s in self.sealed} | ({self.active.path} if self.active else set())
        claimed = self._claim(known)
        with self._lock:
            self.sealed.extend(claimed)
            return [s for s in self.sealed if s.disk_only]

    def _claim(self, known: set[Path]) -> list[Segment]:
        if not self.folder.is_dir():
            return []
        paths = sorted(self.folder.glob("*" + SUFFIX)) + sorted(
            self.folder.parent.glob(self.folder.name + ".replay-*")
        )
        claimed = []
        for path in paths:
            if path in known:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # replayed and deleted by another process meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                st, now = os.fstat(fd), os.stat(path)
            except OSError:  # locked by its live owner or another replayer, or gone
                os.close(fd)
                continue
            if (st.st_ino, st.st_dev) != (now.st_ino, now.st_dev) or st.st_nlink == 0:
                os.close(fd)  # deleted (and maybe recreated) between our open and our lock
                continue
            claimed.append(Segment(path, fd, size=st.st_size, disk_only=True, sealed=True))
        return claimed

    @staticmethod
    def read(seg: Segment) -> Iterator[Line]:
        """The lines of a segment, each parsed (a bad one carries its error instead of a record)."""
        data = b""
        offset = 0
        while True:
            chunk = os.pread(seg.fd, 1 << 20, offset)
            if not chunk:
                break
            data += chunk
            offset += len(chunk)
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, 1):
            if number == len(lines):
                if raw:
                    yield Line(number, raw, error=ValueError("incomplete last line: a write cut short"))
                return
            try:
                value = json.loads(raw)
                if not isinstance(value, dict):
                    raise TypeError(f"a JSON {type(value).__name__}, not an object")
                yield Line(number, raw, record=value)
            except (ValueError, TypeError) as exc:
                yield Line(number, raw, error=exc)

    def dead_letter(self, entry: dict[str, Any]) -> None:
        """Append an entry to rejected.jsonl (shared by every process of the folder: flock, one write, fsync)."""
        entry = {"rejected_at": dt.datetime.now(dt.UTC).isoformat(), **entry}
        data = (json.dumps(entry, default=str) + "\n").encode()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release our segments: an empty one is deleted, the others stay for the next start (unlocked)."""
        with self._lock:
            segs = [*self.sealed, *([self.active] if self.active else [])]
            self.active, self.sealed = None, []
            for seg in segs:
                if seg.size == 0 or (seg.pending == 0 and not seg.disk_only):
                    self._drop(seg)
                else:
                    os.close(seg.fd)

    def files(self) -> list[Path]:
        """Segment files of the folder (any process's, and old replay files) that are not empty."""
        if not self.folder.is_dir():
            return []
        paths = [*self.folder.glob("*" + SUFFIX), *self.folder.parent.glob(self.folder.name + ".replay-*")]
        return sorted(p for p in paths if p.exists() and p.stat().st_size > 0)

    def spooled(self) -> int:
        """Records of ours that only the files hold (a gauge for operators)."""
        with self._lock:
            return sum(1 for s in self.sealed if s.disk_only)
