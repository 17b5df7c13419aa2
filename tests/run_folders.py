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

The layout before run folders (every run of the checkout used the base itself as its pytest temp root: its
folders, ``pg0``, ``test_x0``..., sit directly in the base) left folders that no run folder's sweep removed.
Given the checkout, a sweep also treats everything in the base but ``.lock`` and ``run-*`` as the folder of a
gone run: stops what still runs there (found as above: the folder in a command line, and the folders its
clusters moved to) and removes it. That layout had no lock; a run of it may still be live only as a pytest
process started before the checkout changed layout. So while a pytest process (not this one or its ancestors)
works in the checkout without holding a run folder's owner file, as every run of this layout does from its
claim on, the old folders are left alone (a run of this layout that has not claimed yet, or one given
--basetemp, only postpones their removal to a later sweep).
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


def sweep(base: Path, grace: float = 10.0, *, checkout: Path | None = None) -> list[Swept]:
    """Stops what the gone runs under ``base`` left running and removes their folders; live runs are left
    alone. With ``checkout`` (whose runs use ``base``), the folders of the layout before run folders too, unless
    a run of that layout may still be live. Returns the gone runs' folders (removed unless a process there could
    not be stopped; pid "?" for a folder without an owner file, the old layout's included)."""
    if not base.is_dir():
        return []
    swept = []
    with _base_lock(base):
        if checkout is not None:
            old = [p for p in sorted(base.iterdir()) if p.name != ".lock" and not p.name.startswith(PREFIX)]
            if old and not _unclaimed_run_alive(base, checkout):
                for root in old:
                    swept.append(_remove_gone(root, "?", grace))
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
                swept.append(_remove_gone(root, pid, grace))
            finally:
                if fd >= 0:
                    os.close(fd)
    return swept


def _remove_gone(root: Path, pid: str, grace: float) -> Swept:
    """Stops the processes left under a gone run's folder and removes it (and the folders its clusters moved
    to), unless one of them cannot be stopped: then it is kept, what still runs there may still use it."""
    marks = leftovers.markers(root)
    found = leftovers.find_any(marks)
    gone = Swept(root, pid, found, leftovers.stop(found, grace) if found else [])
    if not gone.unstoppable:
        for moved in marks[1:]:
            if MOVED.match(moved):
                shutil.rmtree(moved, ignore_errors=True)
        if root.is_dir() and not root.is_symlink():
            shutil.rmtree(root, ignore_errors=True)
        else:
            root.unlink(missing_ok=True)
    return gone


def _unclaimed_run_alive(base: Path, checkout: Path) -> bool:
    """Whether a pytest process other than this one and its ancestors works in ``checkout`` without holding
    the owner file of a run folder under ``base`` open (every run of the current layout does from its claim
    on): a run of the layout before run folders, which may still use the base's other folders."""
    skip = leftovers.ancestors()
    checkout = checkout.resolve()
    owners = re.compile(re.escape(str(base.resolve())) + "/" + re.escape(PREFIX) + r"[^/]+/owner$")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if not any(os.path.basename(a) in (b"pytest", b"py.test") for a in args):
                continue  # (python -m pytest, .venv/bin/pytest; not a server naming sigledger-pytest-...)
            cwd = Path(os.readlink(entry / "cwd"))
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if not cwd.is_relative_to(checkout):
            continue
        if not any(owners.match(_readlink(fd)) for fd in fds):
            return True
    return False


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""  # closed meanwhile
