"""The end-of-run check that every server a test run started is stopped (issue 9): every PostgreSQL cluster,
Neo4j server and worker process of the tests lives under the run's pytest temp root (its data directory or its
spool folder is there), so a process whose command line names that root after the session's fixtures were torn
down was left behind, by a failing test or a fixture that did not clean up. The check stops such processes
(SIGTERM, then SIGKILL), reports them and fails the run; on a clean run it reports that none is left."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Leftover:
    pid: int
    cmdline: str


def markers(basetemp: Path) -> list[str]:
    """The run's temp root, and the folders its local clusters moved to because the postgres OS user could not
    reach the temp root (sigledger.core.localdb: a ``location`` pointer file in the cluster's root names them)."""
    found = [str(basetemp)]
    if basetemp.is_dir():
        for pointer in basetemp.rglob("location"):
            try:
                target = pointer.read_text().strip()
            except OSError:
                continue
            if target.startswith("/") and "\n" not in target:
                found.append(target)
    return found


def find_any(marks: list[str]) -> list[Leftover]:
    seen: dict[int, Leftover] = {}
    for mark in marks:
        for p in find(mark):
            seen[p.pid] = p
    return sorted(seen.values(), key=lambda p: p.pid)


def find(marker: str, *, exclude: set[int] | None = None) -> list[Leftover]:
    """Processes whose command line contains ``marker`` (this process and its ancestors excluded)."""
    skip = set(exclude or ()) | ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if marker in cmdline:
            found.append(Leftover(int(entry.name), cmdline))
    return sorted(found, key=lambda p: p.pid)


def ancestors() -> set[int]:
    """This process and its ancestors."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def stop(processes: list[Leftover], grace: float = 10.0) -> list[Leftover]:
    """SIGTERM each, wait up to ``grace`` seconds, SIGKILL the rest; returns those that still exist."""
    for p in processes:
        _signal(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p.pid) for p in processes):
        time.sleep(0.1)
    for p in processes:
        if _alive(p.pid):
            _signal(p.pid, signal.SIGKILL)
    time.sleep(0.2)
    return [p for p in processes if _alive(p.pid)]


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; its parent has not reaped it yet
