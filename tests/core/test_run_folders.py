"""Two pytest runs in one checkout keep their own temp roots and servers, and a run's clean-up only stops what
runs that are gone left behind (tests/run_folders.py). Before: every run of a checkout used one temp root, so a
second run emptied the first's (pytest clears a given --basetemp) and its end-of-run check stopped the first's
servers as its own leftovers."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests import leftovers, run_folders

ROOT = Path(__file__).resolve().parents[2]

# A process that holds a run folder as a pytest run does, with a "server" started from it (its data directory
# in its command line, as a cluster's is); close_fds=False: the run's lock must not leak into what it starts.
HOLDER = """
import subprocess, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests import run_folders
run = run_folders.claim(Path(sys.argv[2]))
server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(run.basetemp / "pg" / "data")],
                          close_fds=False)
print(run.root, server.pid, flush=True)
time.sleep(600)
"""


def _wait_for(path: Path, proc: subprocess.Popen[str], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name}: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, f"no {path.name} after {seconds} s"
        time.sleep(0.1)


def _reap(proc: subprocess.Popen[str]) -> None:
    """Kill a helper process of a test if it still runs, wait for it, close its pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_the_sweep_stops_a_gone_runs_servers_and_leaves_a_live_runs_alone(tmp_path: Path) -> None:
    base = tmp_path / "base"
    holders: list[subprocess.Popen[str]] = []
    try:
        held = {}
        for name in ("live", "gone"):
            p = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(ROOT), str(base)], stdout=subprocess.PIPE, text=True
            )
            holders.append(p)
            assert p.stdout is not None
            root, server = p.stdout.readline().split()
            held[name] = (p, Path(root), int(server))
        live, live_root, live_server = held["live"]
        gone, gone_root, gone_server = held["gone"]
        gone.kill()  # as a run killed half way: its server outlives it
        gone.wait(timeout=10)
        assert leftovers._alive(gone_server)

        swept = run_folders.sweep(base, grace=2.0)

        assert [(s.root, s.pid, [p.pid for p in s.stopped], s.unstoppable) for s in swept] == [
            (gone_root, str(gone.pid), [gone_server], [])
        ]
        assert not gone_root.exists() and not leftovers._alive(gone_server)
        assert live.poll() is None and leftovers._alive(live_server)
        assert (live_root / "owner").read_text().strip() == str(live.pid)
        # and once the live run is gone too, the next sweep cleans its folder
        live.kill()
        live.wait(timeout=10)
        assert [s.root for s in run_folders.sweep(base, grace=2.0)] == [live_root]
        assert not leftovers._alive(live_server) and list(base.glob("run-*")) == []
    finally:
        for p in holders:
            _reap(p)
        leftovers.stop(leftovers.find(str(base)), grace=1.0)


FIRST = """
import os, subprocess, sys, time
from pathlib import Path

def test_first(tmp_path_factory):
    signals = Path(os.environ["RUN_SIGNALS"])
    base = tmp_path_factory.getbasetemp()
    (base / "data").mkdir()
    (base / "data" / "keep").write_text("x")
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(base / "data")])
    try:
        (signals / "first-basetemp").write_text(str(base))
        deadline = time.monotonic() + 300
        while not (signals / "second-done").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        alive, kept = server.poll() is None, (base / "data" / "keep").is_file()
    finally:
        server.kill()
        server.wait()
    assert (alive, kept) == (True, True)
"""

SECOND = """
import os
from pathlib import Path

def test_second(tmp_path, tmp_path_factory):
    (tmp_path / "x").write_text("x")
    (Path(os.environ["RUN_SIGNALS"]) / "second-basetemp").write_text(str(tmp_path_factory.getbasetemp()))
"""


def test_two_runs_in_one_checkout_keep_their_temp_roots_and_servers(tmp_path: Path) -> None:
    """The first run holds a server (a process naming its data directory) while a second run of the same
    checkout starts and finishes: the server and its data directory are still there afterwards, and neither run
    reports the other's processes as its leftovers. In a copy of the test harness (conftest and its modules),
    so that the runs' base folder is not this run's."""
    checkout = tmp_path / "checkout"
    (checkout / "tests").mkdir(parents=True)
    for name in ("conftest.py", "leftovers.py", "run_folders.py"):
        if (ROOT / "tests" / name).is_file():
            shutil.copy(ROOT / "tests" / name, checkout / "tests" / name)
    (checkout / "tests" / "test_first.py").write_text(FIRST)
    (checkout / "tests" / "test_second.py").write_text(SECOND)
    (checkout / "pytest.ini").write_text(
        "[pytest]\naddopts = -p no:cacheprovider --import-mode=importlib\npythonpath = .\n"
    )
    signals = tmp_path / "signals"
    signals.mkdir()
    env = os.environ | {"RUN_SIGNALS": str(signals)}
    base = (
        Path(tempfile.gettempdir())
        / f"sigledger-pytest-{hashlib.sha256(str(checkout).encode()).hexdigest()[:10]}"
    )
    pytest_cmd = [sys.executable, "-m", "pytest", "-q"]
    first = subprocess.Popen(
        [*pytest_cmd, "tests/test_first.py"],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(signals / "first-basetemp", first)
        second = subprocess.run(
            [*pytest_cmd, "tests/test_second.py"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        (signals / "second-done").touch()
        first_out = first.communicate(timeout=300)[0]
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=10)
        leftovers.stop(leftovers.find(str(base)), grace=1.0)
        shutil.rmtree(base, ignore_errors=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert first.returncode == 0, first_out
    first_base, second_base = ((signals / f"{n}-basetemp").read_text() for n in ("first", "second"))
    assert first_base != second_base
    assert all(Path(b).is_relative_to(base) for b in (first_base, second_base))


def _sleeper(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """A process that stands for a server (its data directory in its command line) or a pytest run; returned
    once it runs (right after the exec its command line can still read empty)."""
    p = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline() == "up\n"
    return p


def _old_layout(base: Path) -> None:
    """What a run of the layout before run folders left: the base itself was its pytest temp root."""
    (base / "pg0" / "data").mkdir(parents=True)
    (base / "pg0" / "data" / "PG_VERSION").write_text("15\n")
    (base / "test_x0").mkdir()
    (base / "test_x0" / "f").write_text("x")


def test_the_sweep_removes_the_old_layouts_folders_unless_a_run_of_it_may_be_live(tmp_path: Path) -> None:
    """The folders of the layout before run folders (directly in the base) are a gone run's: what runs there is
    stopped and they are removed. Not while a pytest process works in the checkout without a run folder (a run
    of that layout, which had no lock, may still use them); a claimed run of the current layout does not count.
    Before, only run-* folders were swept: the old layout's stayed for ever."""
    checkout = tmp_path / "checkout"
    (checkout / "tests").mkdir(parents=True)
    base = tmp_path / "base"
    _old_layout(base)
    procs: list[subprocess.Popen[Any]] = []
    try:
        server = _sleeper(str(base / "pg0" / "data"))
        procs.append(server)
        # a live run of the current layout, a pytest process working in the checkout: it holds its run folder
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(ROOT), str(base), "pytest"],
            cwd=checkout,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(holder)
        assert holder.stdout is not None
        live_root, live_server = holder.stdout.readline().split()
        # a pytest process of the checkout that holds no run folder: maybe a live run of the old layout
        old_run = _sleeper("pytest", cwd=checkout / "tests")
        procs.append(old_run)

        assert run_folders.sweep(base, grace=2.0, checkout=checkout) == []
        assert (base / "pg0" / "data" / "PG_VERSION").is_file() and (base / "test_x0" / "f").is_file()
        assert leftovers._alive(server.pid)

        old_run.kill()
        old_run.wait(timeout=10)
        swept = run_folders.sweep(base, grace=2.0, checkout=checkout)
        assert [(s.root, s.pid, [p.pid for p in s.stopped], s.unstoppable) for s in swept] == [
            (base / "pg0", "?", [server.pid], []),
            (base / "test_x0", "?", [], []),
        ]
        assert sorted(p.name for p in base.iterdir()) == [".lock", Path(live_root).name]
        assert not leftovers._alive(server.pid)
        assert holder.poll() is None and leftovers._alive(int(live_server))
    finally:
        for p in procs:
            _reap(p)
        leftovers.stop(leftovers.find(str(base)), grace=1.0)


def test_a_run_removes_the_folders_of_the_layout_before_run_folders(tmp_path: Path) -> None:
    """A pytest run of a checkout (its conftest) sweeps what a run of the old layout left in the checkout's base:
    its server stopped, its folders removed, and says so. In a copy of the test harness, as above."""
    checkout = tmp_path / "checkout"
    (checkout / "tests").mkdir(parents=True)
    for name in ("conftest.py", "leftovers.py", "run_folders.py"):
        shutil.copy(ROOT / "tests" / name, checkout / "tests" / name)
    (checkout / "tests" / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    (checkout / "pytest.ini").write_text(
        "[pytest]\naddopts = -p no:cacheprovider --import-mode=importlib\npythonpath = .\n"
    )
    base = run_folders.base_for(checkout.resolve())
    _old_layout(base)
    server = _sleeper(str(base / "pg0" / "data"))
    try:
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "tests/test_nothing.py"],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert not (base / "pg0").exists() and not (base / "test_x0").exists()
        assert not leftovers._alive(server.pid)
        assert f"{base / 'pg0'} (pid ?): 1 process(es) left running there stopped; removed" in res.stdout
        assert [p.name for p in base.iterdir() if p.name != ".lock"] == [
            p.name for p in base.glob("run-*")
        ]  # the run's own folder only
    finally:
        _reap(server)
        leftovers.stop(leftovers.find(str(base)), grace=1.0)
        shutil.rmtree(base, ignore_errors=True)
