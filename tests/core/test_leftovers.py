"""The end-of-run server check (tests/leftovers.py) finds a process by the path in its command line and stops
it, even one that ignores SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import leftovers


def test_finds_and_stops_a_process_left_running(tmp_path: Path) -> None:
    marker = str(tmp_path / "server-data")
    stubborn = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", stubborn, marker], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "1"
        found = leftovers.find(marker)
        assert [p.pid for p in found] == [proc.pid]
        assert leftovers.stop(found, grace=0.5) == []
        proc.wait(timeout=10)
        assert leftovers.find(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
