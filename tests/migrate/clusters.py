"""A throwaway PostgreSQL cluster of its own for deployment tests: the sigledger roles are cluster-wide, so a
test of how they come to exist (a deployer with CREATEROLE, roles made by a DBA, an old release's roles) needs
a cluster where they do not exist yet. Every login connects over loopback TCP (trust), as a real
non-superuser role where the test says so."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sigledger.core.localdb import LocalCluster

from tests.migrate.helpers import cli_process


class Cluster:
    def __init__(self, local: LocalCluster) -> None:
        self.local = local

    def dsn(self, dbname: str = "sigledger", user: str = "postgres") -> str:
        return self.local.dsn(dbname, user=user)

    def sql(self, *statements: str, dbname: str = "postgres", user: str = "postgres") -> None:
        with psycopg.connect(self.dsn(dbname, user), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def query(self, statement: str, dbname: str = "postgres", user: str = "postgres") -> list[tuple]:
        with psycopg.connect(self.dsn(dbname, user), autocommit=True) as conn:
            return conn.execute(statement.encode()).fetchall()

    def psql(
        self, script: str, dbname: str = "postgres", user: str = "postgres", single: bool = False
    ) -> str:
        """Run a script with psql (stops at the first error), as a DBA or an old deployment would."""
        args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(dbname, user)]
        if single:
            args.append("-1")
        out = subprocess.run(args, input=script, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout + out.stderr

    def sigledger(
        self, *args: str, dbname: str = "app", user: str = "deployer"
    ) -> subprocess.CompletedProcess[str]:
        return cli_process([*args, "--dsn", self.dsn(dbname, user)])


@contextmanager
def fresh_cluster(tmp_path: Path) -> Iterator[Cluster]:
    local = LocalCluster(tmp_path / f"pg-{os.getpid()}")
    local.start()
    try:
        yield Cluster(local)
    finally:
        local.destroy()
