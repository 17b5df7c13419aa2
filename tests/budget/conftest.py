"""Fixtures of the budget tests: a private PostgreSQL cluster for the tests that stop and restart the server
(the shared session cluster is never stopped), and a helper to run worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sigledger.core.db import Database
from sigledger.core.errors import Unavailable
from sigledger.core.localdb import LocalCluster
from sigledger.migrate import Migrator

ROOT = Path(__file__).resolve().parent.parent.parent


class OwnCluster:
    def __init__(self, root: Path) -> None:
        self.cluster = LocalCluster(root)

    @property
    def dsn(self) -> str:
        return self.cluster.dsn("sigledger")

    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnCluster]:
    """A cluster of our own, migrated, that a test may stop and start."""
    oc = OwnCluster(tmp_path_factory.mktemp("own") / "pg")
    oc.start()
    Migrator(oc.dsn).up()
    yield oc
    oc.cluster.destroy()


def wait_reachable(db: Database, seconds: float = 60) -> None:
    """Wait until the pool reaches the server again after a restart (psycopg_pool backs off its reconnection
    attempts after an outage). A wait for a condition, not an assertion about time."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            db.call("SELECT 1")
            return
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.budget.workers", *args]


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "harness"), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def popen(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        worker(*args),
        cwd=ROOT,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def ledger_keys(dsn: str, prefix: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT idempotency_key FROM sigledger.llm_cost_log WHERE idempotency_key LIKE %s",
            (prefix + "%",),
        ).fetchall()
    return [r[0] for r in rows]
