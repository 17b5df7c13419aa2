"""Start, stop and inspect the real Neo4j (5.26 LTS, embedded, Bolt on loopback) used by tests and the demo.

The server is the Java launcher in ``tools/neo4j`` (``sigledger.neo4j.Launcher``). ``build()`` runs Maven,
which fetches the Neo4j jars from Maven Central into ``~/.m2`` on first use and writes the runtime classpath
to ``tools/neo4j/target/classpath.txt``; later builds reuse both.

Command line: ``python -m sigledger.graph.neo4j_server up|down|status`` (``make neo4j-up`` / ``make neo4j-down``).
State lives in ``.sigledger/neo4j/`` of the checkout (``SIGLEDGER_NEO4J_STATE_DIR``): ``port``, ``neo4j.pid``,
``neo4j.log``, ``server.json``, ``data/``.

The Bolt port is chosen like the local PostgreSQL's (sigledger.core.localdb): a free loopback port, drawn once
and written to the state folder's ``port`` file, so two checkouts (or test runs) never collide, and the graph
commands and the demo find the server there (``local_uri``). ``SIGLEDGER_NEO4J_PORT`` pins it instead.
Password ``SIGLEDGER_NEO4J_PASSWORD`` (``sigledger-test``; user ``neo4j``), heap ``SIGLEDGER_NEO4J_HEAP`` (512m).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sigledger.core.localdb import free_port
from sigledger.core.paths import CHECKOUT_ROOT, state_dir

# The launcher's sources live in the checkout (tools/neo4j); an installed package has none.
LAUNCHER_DIR = (CHECKOUT_ROOT or Path.cwd()) / "tools" / "neo4j"
DEFAULT_STATE_DIR = state_dir() / "neo4j"
DEFAULT_PORT = 7687  # an external server's usual port: the URI when no local server was ever set up
DEFAULT_USER = "neo4j"
DEFAULT_PASSWORD = "sigledger-test"
MAIN_CLASS = "sigledger.neo4j.Launcher"


class Neo4jServerError(RuntimeError):
    """The Neo4j launcher could not be built, started or stopped (the message says why)."""


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise Neo4jServerError("java not found: install a Java 17 runtime or set JAVA_HOME")
    return found


def build(quiet: bool = True) -> list[str]:
    """Compile the launcher (if its sources changed) and return the classpath entries."""
    classes = LAUNCHER_DIR / "target" / "classes"
    cp_file = LAUNCHER_DIR / "target" / "classpath.txt"
    if not (LAUNCHER_DIR / "pom.xml").is_file():
        raise Neo4jServerError(
            f"the Neo4j launcher (tools/neo4j) is part of a sigledger checkout: {LAUNCHER_DIR}"
        )
    sources = [LAUNCHER_DIR / "pom.xml", *sorted((LAUNCHER_DIR / "src").rglob("*.java"))]
    newest_source = max(p.stat().st_mtime for p in sources)
    up_to_date = cp_file.exists() and cp_file.stat().st_mtime >= newest_source
    if not up_to_date:
        mvn = shutil.which("mvn")
        if not mvn:
            raise Neo4jServerError("mvn not found: Maven 3 is needed to fetch Neo4j from Maven Central")
        cmd = [mvn, "-B", "-f", str(LAUNCHER_DIR / "pom.xml"), "package"]
        if quiet:
            cmd.insert(1, "-q")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise Neo4jServerError(
                f"building the Neo4j launcher failed (exit {proc.returncode}):\n"
                + (proc.stdout + proc.stderr)[-4000:]
            )
    return [str(classes), *cp_file.read_text().strip().split(os.pathsep)]


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _is_launcher(pid: int) -> bool:
    """Guard against a stale pid file pointing at an unrelated, reused pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return MAIN_CLASS in cmdline


@dataclass
class Neo4jServer:
    """One launcher process with its own data directory and port."""

    state_dir: Path = DEFAULT_STATE_DIR
    port: int = DEFAULT_PORT
    password: str | None = DEFAULT_PASSWORD
    heap: str = "512m"
    user: str = DEFAULT_USER
    # The child we started (None when another process started it): kept so it can be reaped.
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.port}"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.user, self.password) if self.password is not None else None

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "neo4j.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "neo4j.log"

    @property
    def info_file(self) -> Path:
        return self.state_dir / "server.json"

    def pid(self) -> int | None:
        pid = _read_pid(self.pid_file)
        if pid is not None and _alive(pid) and _is_launcher(pid):
            return pid
        return None

    def bolt_answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 180.0) -> None:
        """Build if needed, launch, and return once Bolt accepts connections."""
        if self.pid() is not None:
            if self.bolt_answers():
                return
            raise Neo4jServerError(
                f"a launcher is running (pid {self.pid()}) but Bolt on {self.uri} does not answer"
            )
        if self.bolt_answers():
            raise Neo4jServerError(f"port {self.port} is already in use by another process")
        classpath = build()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            _java(),
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:ActiveProcessorCount=2",
            "-cp",
            os.pathsep.join(classpath),
            MAIN_CLASS,
            "--dir",
            str(self.state_dir / "data"),
            "--port",
            str(self.port),
        ]
        if self.password is not None:
            cmd += ["--password", self.password]
        if self.log_file.exists():
            self.log_file.replace(self.log_file.with_suffix(".log.1"))
        with open(self.log_file, "wb") as log:
            # Own session: `up` returns while the server keeps running; Ctrl-C in the caller does not reach it.
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._proc = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        self.info_file.write_text(
            json.dumps(
                {
                    "uri": self.uri,
                    "port": self.port,
                    "user": self.user,
                    "password": self.password,
                    "pid": proc.pid,
                },
                indent=2,
            )
            + "\n"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Neo4jServerError(
                    f"Neo4j exited with code {proc.returncode} during start; log tail:\n{self._log_tail()}"
                )
            if self.bolt_answers() and self._ready_logged(proc.pid):
                return
            time.sleep(0.25)
        self.stop()
        raise Neo4jServerError(
            f"Neo4j did not answer on {self.uri} within {timeout:.0f}s; log tail:\n{self._log_tail()}"
        )

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    def _ready_logged(self, pid: int) -> bool:
        # The launcher prints READY after the default database answered a query (one log per start).
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return f"READY {self.uri}" in text

    def _log_tail(self, n: int = 40) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 60.0) -> bool:
        """SIGTERM (clean shutdown), then SIGKILL after ``timeout``. Returns whether a server was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self._reap()
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL without a clean shutdown (for crash tests)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self._reap()
        self.pid_file.unlink(missing_ok=True)

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {
            "running": pid is not None,
            "pid": pid,
            "uri": self.uri,
            "bolt_answers": self.bolt_answers(),
            "state_dir": str(self.state_dir),
        }


def local_state_dir() -> Path:
    return Path(os.environ.get("SIGLEDGER_NEO4J_STATE_DIR", str(DEFAULT_STATE_DIR)))


def local_port(directory: Path | None = None, *, choose: bool = False) -> int | None:
    """The local server's Bolt port: SIGLEDGER_NEO4J_PORT, else the state folder's ``port`` file; with
    ``choose``, a free port is drawn and written there when there is none yet."""
    pinned = os.environ.get("SIGLEDGER_NEO4J_PORT")
    if pinned:
        return int(pinned)
    port_file = (directory or local_state_dir()) / "port"
    try:
        return int(port_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        if not choose:
            return None
    port_file.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    port_file.write_text(f"{port}\n")
    return port


def local_uri() -> str:
    """Where the local server of ``make neo4j-up`` listens (the default Bolt URI of every graph command)."""
    return f"bolt://127.0.0.1:{local_port() or DEFAULT_PORT}"


def from_env() -> Neo4jServer:
    password = os.environ.get("SIGLEDGER_NEO4J_PASSWORD", DEFAULT_PASSWORD)
    directory = local_state_dir()
    port = local_port(directory, choose=True)
    assert port is not None
    return Neo4jServer(
        state_dir=directory,
        port=port,
        password=password or None,
        heap=os.environ.get("SIGLEDGER_NEO4J_HEAP", "512m"),
    )


def ensure_free_port(server: Neo4jServer) -> None:
    """The state folder's port is taken by another process and no server of ours runs: draw a new one
    (never when SIGLEDGER_NEO4J_PORT pins it)."""
    if os.environ.get("SIGLEDGER_NEO4J_PORT") or server.pid() is not None or not server.bolt_answers():
        return
    server.port = free_port()
    (server.state_dir / "port").write_text(f"{server.port}\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in {"up", "down", "status", "build"}:
        print("usage: python -m sigledger.graph.neo4j_server up|down|status|build", file=sys.stderr)
        return 2
    server = from_env()
    try:
        if args[0] == "build":
            build(quiet=False)
            print("launcher built")
        elif args[0] == "up":
            ensure_free_port(server)
            server.start()
            print(
                f"Neo4j up at {server.uri} (user {server.user}, pid {server.pid()}, log {server.log_file}); "
                f"the graph commands find it through {server.state_dir / 'port'}"
            )
        elif args[0] == "down":
            print("Neo4j stopped" if server.stop() else "Neo4j was not running")
        else:
            st = server.status()
            print(json.dumps(st, indent=2))
            return 0 if st["running"] else 3
    except Neo4jServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
