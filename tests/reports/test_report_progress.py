"""A report over a long range, run on a terminal, reads the ledger month by month and shows its progress and rate
on stderr; its result is the one a single call gives (what a pipe gets)."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import subprocess
import sys

import psycopg

from tests.reports.helpers import ROOT, cli_process, env


def test_long_report_on_a_terminal_shows_progress_and_the_same_result(
    conn: psycopg.Connection, db_dsn: str
) -> None:
    conn.execute("SELECT sigledger.create_agent('pg-a', 100)")
    conn.execute("SELECT sigledger.create_agent('pg-b', 100)")
    now = dt.datetime.now(dt.UTC)
    for n in range(120):  # one row a day, 120 days back, two agents, three models
        at = now - dt.timedelta(days=n, hours=1)
        conn.execute(
            "INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd, charged_at,"
            " created_at) VALUES (%s, sigledger.find_agent(%s), %s, 'p', %s, %s, %s)",
            (f"pg-{n}", "pg-a" if n % 2 else "pg-b", f"m{n % 3}", f"0.{n + 1:03d}", at, at),
        )
    args = ("cost", "report", "--by", "month", "--by", "model", "--since", "-125d", "--json", "--dsn", db_dsn)
    piped = cli_process(*args)
    assert piped.returncode == 0, piped.stderr
    assert "month 1/" not in piped.stderr  # not a terminal: one call, no progress

    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sigledger", *args],
            stdout=subprocess.PIPE,
            stderr=slave,
            cwd=ROOT,
            env=env(),
            timeout=120,
            check=False,
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    progress = b"".join(chunks).decode()
    assert proc.returncode == 0, progress
    done = re.findall(r"month (\d+)/(\d+): (\d+) ledger rows read \([\d,]+ rows/s\)", progress)
    assert len(done) >= 5 and done[-1] == (done[-1][1], done[-1][1], "120"), progress  # the last of n months
    assert json.loads(proc.stdout) == json.loads(piped.stdout)
    total = json.loads(piped.stdout)[-1]
    assert total["is_total"] and total["calls"] == 120
