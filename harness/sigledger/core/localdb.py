"""A throwaway local PostgreSQL cluster for the demo and for development (``sigledger db up``).

The data directory lives in the checkout (``.sigledger/pg``, ignored by git). initdb refuses to run as root,
so when we are root every server command runs as the ``postgres`` OS user. The server listens on loopback
TCP only, with trust authentication: it is a scratch cluster, never a deployment.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sigledger.core.paths import state_dir

PG_BINDIR_CANDIDATES = ("/usr/lib/postgresql/15/bin",)


def pg_bindir() -> Path:
    """The server binaries (Debian keeps them out of PATH)."""
    env = os.environ.get("SIGLEDGER_PG_BINDIR")
    if env:
        return Path(env)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    for candidate in PG_BINDIR_CANDIDATES:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise FileNotFoundError("PostgreSQL server binaries not found (install postgresql-15)")


def as_server_user(argv: list[str]) -> list[str]:
    """Prefix a command so it runs as the postgres OS user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def server_user_can_use(path: Path) -> bool:
    if os.geteuid() != 0:
        return True
    probe = subprocess.run(as_server_user(["test", "-w", str(path)]), check=False)
    return probe.returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalCluster:
    root: Path

    @classmethod
    def default(cls) -> LocalCluster:
        return cls(state_dir() / "pg")

    @property
    def datadir(self) -> Path:
        return self._effective_root() / "data"

    @property
    def logfile(self) -> Path:
        return self._effective_root() / "server.log"

    def _effective_root(self) -> Path:
        # When the checkout sits where the postgres user cannot reach (a 0700 home), keep the cluster in a
        # per-checkout folder under /var/tmp instead; the pointer file in the checkout says where.
        pointer = self.root / "location"
        if pointer.is_file():
            return Path(pointer.read_text().strip())
        return self.root

    def _choose_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            if not server_user_can_use(self.root):
                digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
                alt = Path("/var/tmp") / f"sigledger-{digest}"
                if alt.exists():
                    # Left by an earlier cluster at the same checkout path whose pointer is gone with it
                    # (a destroyed checkout, a test temp folder reused): stop whatever runs there, start afresh.
                    if (alt / "data" / "PG_VERSION").is_file():
                        subprocess.run(
                            as_server_user(
                                [
                                    str(pg_bindir() / "pg_ctl"),
                                    "stop",
                                    "-m",
                                    "immediate",
                                    "-D",
                                    str(alt / "data"),
                                ]
                            ),
                            capture_output=True,
                            check=False,
                        )
                    shutil.rmtree(alt)
                alt.mkdir(parents=True, exist_ok=True)
                shutil.chown(alt, "postgres")
                (self.root / "location").write_text(str(alt))
                return alt
        return self.root

    @property
    def port_file(self) -> Path:
        return self.root / "port"

    @property
    def port(self) -> int:
        return int(self.port_file.read_text().strip())

    def dsn(self, dbname: str = "sigledger", user: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").is_file() and self.port_file.is_file()

    def is_running(self) -> bool:
        if not self.initialized():
            return False
        pg_ctl = str(pg_bindir() / "pg_ctl")
        res = subprocess.run(
            as_server_user([pg_ctl, "status", "-D", str(self.datadir)]), capture_output=True, check=False
        )
        return res.returncode == 0

    def init(self) -> None:
        if self.initialized():
            return
        root = self._choose_root()
        data = root / "data"
        subprocess.run(
            as_server_user(
                [
                    str(pg_bindir() / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.port_file.write_text(f"{free_port()}\n")

    def start(self) -> None:
        self.init()
        if self.is_running():
            return
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
            "-c max_connections=200 -c shared_preload_libraries=''"
        )
        if os.geteuid() == 0:
            self.logfile.touch()
            shutil.chown(self.logfile, "postgres")
        subprocess.run(
            as_server_user(
                [
                    str(pg_bindir() / "pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.logfile),
                    "-o",
                    opts,
                ]
            ),
            check=True,
            capture_output=True,
        )
        self._create_database()

    def _create_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'sigledger'").fetchone()
                    if not exists:
                        conn.execute("CREATE DATABASE sigledger")
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.is_running():
            subprocess.run(
                as_server_user(
                    [str(pg_bindir() / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.datadir)]
                ),
                check=True,
                capture_output=True,
            )

    def destroy(self) -> None:
        self.stop()
        effective = self._effective_root()
        if effective != self.root:
            shutil.rmtree(effective, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
