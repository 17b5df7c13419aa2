"""The local Neo4j's port is chosen like the local PostgreSQL's: a free port, drawn once and written to the
state folder (so two checkouts or test runs never collide), unless SIGLEDGER_NEO4J_PORT pins it; the graph
commands find the server there. No server is started here (tests/graph/conftest.py starts the real one)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sigledger.graph import neo4j_server
from sigledger.graph.driver import Neo4jSettings

from .conftest import ROOT


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("SIGLEDGER_NEO4J_PORT", "SIGLEDGER_NEO4J_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SIGLEDGER_NEO4J_STATE_DIR", str(tmp_path / "neo4j"))
    return tmp_path / "neo4j"


def test_a_free_port_is_drawn_once_and_found_by_the_graph_commands(state: Path) -> None:
    assert neo4j_server.local_port() is None  # nothing set up yet: the URI falls back to 7687
    assert Neo4jSettings.from_env().uri == "bolt://127.0.0.1:7687"

    server = neo4j_server.from_env()
    assert (state / "port").read_text().strip() == str(server.port)
    assert server.port != neo4j_server.DEFAULT_PORT
    assert neo4j_server.from_env().port == server.port  # drawn once
    assert Neo4jSettings.from_env().uri == f"bolt://127.0.0.1:{server.port}"

    status = subprocess.run(
        [sys.executable, "-m", "sigledger.graph.neo4j_server", "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert status.returncode == 3  # not running
    assert f"bolt://127.0.0.1:{server.port}" in status.stdout


def test_a_taken_port_is_drawn_again_unless_pinned(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = neo4j_server.from_env()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", server.port))
        taken.listen()
        neo4j_server.ensure_free_port(server)
        assert server.port != taken.getsockname()[1]
        assert (state / "port").read_text().strip() == str(server.port)

        monkeypatch.setenv("SIGLEDGER_NEO4J_PORT", str(taken.getsockname()[1]))
        pinned = neo4j_server.from_env()
        assert pinned.port == taken.getsockname()[1]
        neo4j_server.ensure_free_port(pinned)  # pinned: left alone (start() then says the port is in use)
        assert pinned.port == taken.getsockname()[1]
        assert Neo4jSettings.from_env().uri == f"bolt://127.0.0.1:{taken.getsockname()[1]}"
