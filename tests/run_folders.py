"""Each pytest run's own temp folder, and the clean-up of the folders of runs that are gone.

Every run of a checkout works under one base folder, ``<tmp>/sigledger-pytest-<hash of the checkout path>``
(not the shared /tmp/pytest-of-<user>, whose clean-up of old numbered folders deleted another session's
running cluster), in a folder of its own: ``run-<pid>-<random>``, whose ``tmp`` is the run's pytest temp root
(the data directories of its PostgreSQL clusters, its Neo4j servers, its workers' spool folders). Two runs in
one checkout therefore never share a data directory, and the end-of-run server check (tests/leftovers.py), which
stops the processes whose command line names the run's temp root, only ever sees its own run's.

The run holds an exclusive ``flock`` on ``<run folder>/owner`` for its whole life (the file also names its pid,
for a human). The kernel drops the lock when the process ends, however it ends (SIGKILL, a crash, the machine's
OOM killer), and the descriptor is not inherited by the servers the run starts (Python opens it
close-on-exec), so a server that outlives its run does not keep the run alive. At its start each run sweeps the
base: a run folder whose lock it can take belongs to a run that is gone; the processes left under it (found by
the folder in their command line, as the end-of-run check finds them, and in the folders its clusters moved
to: tests/leftovers.py markers) are stopped and the folder removed. A folder whose lock is held belongs to a
live run and is left alone. Claims and sweeps take ``<base>/.lock`` for their duration, so a sweep never sees
a run folder between its creation and its owner's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests import leftovers

PREFIX = "run-"
# the folders a cluster of the run moved to when the postgres OS user could not reach the temp root
# (sigledger.core.localdb names them so): removed with the run's folder, nothing else a pointer names
MOVED = re.compile(r"^/var/tmp/sigledger-[0-9a-f]{12}$")


def base_for(checkout: Path) -> Path:
    digest = hashlib.sha256(str(checkout).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"sigledger-pytest-{digest}"


@dataclass
class Run:
    """A claimed run folder; ``basetemp`` is the run's pytest temp root (made by pytest)."""

    root: Path
    fd: int

    @property
    def basetemp(self) -> Path:
        return self.root / "tmp"

    def release(self) -> None:
        """Drops the lock (the folder stays for inspection until a later run's sweep removes it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Swept:
    """A run folder whose run was gone: its pid (as its owner file said), the processes stopped, those that
    could not be."""

    root: Path
    pid: str
    stopped: list[leftovers.Leftover] = field(default_factory=list)
    unstoppable: list[leftovers.Leftover] = field(default_factory=list)


@contextlib.contextmanager
def _base_lock(base: Path) -> Iterator[None]:
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def claim(base: Path) -> Run:
    """A new run folder under ``base``, locked by this process until ``release`` or its end."""
    with _base_lock(base):
        root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
        fd = os.open(root / "owner", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        os.write(fd, f"{os.getpid()}\n".encode())
        return Run(root, fd)


def sweep(base: Path, grace: float = 10.0) -> list[Swept]:
    """Stops what the gone runs under ``base`` left running and removes their folders; live runs are left
    alone. Returns the gone runs' folders (removed unless a process there could not be stopped)."""
    if not base.is_dir():
        return []
    swept = []
    with _base_lock(base):
        for root in sorted(base.glob(f"{PREFIX}*")):
            if not root.is_dir():
                continue
            try:
                fd = os.open(root / "owner", os.O_RDWR)
            except FileNotFoundError:
                # no owner file: made by a run that died before it wrote one (claims hold the base lock)
                fd = -1
            except OSError:
                continue
            try:
                if fd >= 0:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live run
                    pid = os.read(fd, 32).decode(errors="replace").strip()
                else:
                    pid = "?"
                marks = leftovers.markers(root)
                found = leftovers.find_any(marks)
                gone = Swept(root, pid, found, leftovers.stop(found, grace) if found else [])
                swept.append(gone)
                if gone.unstoppable:
                    continue  # kept: what still runs there may still use it
                for moved in marks[1:]:
                    if MOVED.match(moved):
                        shutil.rmtree(moved, ignore_errors=True)
                shutil.rmtree(root, ignore_errors=True)
            finally:
                if fd >= 0:
                    os.close(fd)
    return swept
