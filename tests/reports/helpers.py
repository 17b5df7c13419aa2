"""Helpers of the read-side tests: the CLI in-process and as a real process, a seeded ledger, and a process whose
output lines are read with a deadline."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import psycopg
from click.testing import CliRunner, Result
from sigledger.cli import main

ROOT = Path(__file__).resolve().parent.parent.parent


def run(dsn: str, *args: str) -> Result:
    """The CLI in this process (options before a "--"; what follows it is positional)."""
    argv = list(args)
    at = argv.index("--") if "--" in argv else len(argv)
    return CliRunner().invoke(main, [*argv[:at], "--dsn", dsn, *argv[at:]], catch_exceptions=False)


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT / "harness"), str(ROOT), out.get("PYTHONPATH", "")])
    return out


def cli_process(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`python -m sigledger ...` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "sigledger", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env(),
        timeout=timeout,
        **kwargs,
    )


def cli_popen(*args: str) -> subprocess.Popen[str]:
    """`python -m sigledger ...` started as a real process, stdout and stderr piped (communicate() them)."""
    return subprocess.Popen(
        [sys.executable, "-m", "sigledger", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env(),
    )


class LineProcess:
    """A process whose stdout and stderr lines are collected by threads, read with a deadline."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: queue.Queue[str] = queue.Queue()
        self.err_lines: list[str] = []
        self.threads = [
            threading.Thread(target=self._pump, args=(stream, q), daemon=True)
            for stream, q in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for t in self.threads:
            t.start()

    @staticmethod
    def _pump(stream: IO[str] | None, q: queue.Queue[str]) -> None:
        assert stream is not None
        for line in stream:
            q.put(line.rstrip("\n"))

    def line(self, timeout: float = 60) -> str:
        """The next stdout line (AssertionError when none comes in time)."""
        try:
            return self.stdout.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout}s; stderr: {self.drain_err()}") from None

    def wait_err(self, needle: str, timeout: float = 60) -> str:
        """Wait for a stderr line containing needle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.stderr.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.err_lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"{needle!r} not on stderr within {timeout}s: {self.err_lines}")

    def drain_err(self) -> list[str]:
        while True:
            try:
                self.err_lines.append(self.stderr.get_nowait())
            except queue.Empty:
                return self.err_lines

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Kill the process if it still runs, and release its pipes (always call it: in a finally)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for t in self.threads:
            t.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def sigledger(*args: str) -> list[str]:
    return [sys.executable, "-m", "sigledger", *args]


def record(dsn: str, agent: str, cost: str, key: str, *, model: str = "m", provider: str = "p") -> int:
    """One ledger row through the API (as whoever dsn logs in as)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT sigledger.record_cost(p_idempotency_key => %s, p_agent_id => sigledger.find_agent(%s),"
            " p_model => %s, p_provider => %s, p_cost_usd => %s::numeric)",
            (key, agent, model, provider, Decimal(cost)),
        ).fetchone()
    assert row is not None
    return int(row[0])
