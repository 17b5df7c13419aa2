"""The asyncio API from a real asyncio application (issue 9): tests/budget/asgi_app.py served by uvicorn, 300
concurrent requests each reserving through AsyncBudgetGuard (the agent named by name), settling, and recording a
second cost through AsyncCostTracker. Every cost is in the ledger exactly once, no hold is left open, and a
loop-lag probe inside the application never saw the event loop blocked beyond a bound far above noise (the
sync guard called from async code stalled it 40 ms at 20 concurrent calls; the figure of a quiet run is in
docs/library.md). SIGTERM then takes uvicorn's graceful path (the tracker's handler, installed after uvicorn's,
chains to it), and the lifespan shutdown closes the tracker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from sigledger import BudgetClient, Database
from sigledger.core.localdb import free_port

from tests.budget.conftest import ROOT, worker_env

REQUESTS = 300
# Bounds on the probe's lag (seconds). A loop blocked by sigledger lags most probes (the sync guard called from
# this application: p50 above 0.5 s); a busy shared machine descheduling the process lags a few (seen: max
# 0.30 s at a load average of 14 on 2 CPUs, p95 under 0.02 s). So most probes must be on time, and no stall
# may reach a second.
LAG_P95_BOUND = 0.05
LAG_MAX_BOUND = 1.0


async def get(port: int, path: str) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw[:300]
    return json.loads(body)


async def fire(port: int, agent: str) -> list[Any]:
    return await asyncio.gather(*(get(port, f"/call?agent={agent}&key=async-{i}") for i in range(REQUESTS)))


def wait_ready(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            asyncio.run(get(port, "/lag"))
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the application never answered")


def test_hundreds_of_concurrent_tasks_in_an_asyncio_application(
    admin_dsn: str, app_dsn: str, db_dsn: str, tmp_path: Path
) -> None:
    agent = "async-app"
    with Database(admin_dsn) as db:
        BudgetClient(db).create_agent(agent, Decimal(100))
    port = free_port()
    env = {**worker_env(), "APP_DSN": app_dsn, "APP_SPOOL": str(tmp_path / "spool")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.budget.asgi_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--lifespan",
            "on",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(port, proc)
        asyncio.run(get(port, "/lag/reset"))
        replies = asyncio.run(fire(port, agent))
        lag = asyncio.run(get(port, "/lag"))
        status = asyncio.run(get(port, f"/status?agent={agent}"))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert [r["outcome"] for r in replies] == ["settled"] * REQUESTS
    print(f"loop-lag probe: {lag}")
    assert lag["probes"] > 0 and lag["p95"] < LAG_P95_BOUND and lag["max"] < LAG_MAX_BOUND, lag
    assert status[0]["open_reservations"] == 0
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown
    assert proc.returncode in (0, -signal.SIGTERM), err[-2000:]
    assert "SHUTDOWN COMPLETE" in out and "Traceback" not in err, err[-2000:]
    with psycopg.connect(db_dsn) as conn:
        keys = [
            k
            for (k,) in conn.execute(
                "SELECT idempotency_key FROM sigledger.llm_cost_log l JOIN sigledger.agent_registry a"
                " ON a.id = l.agent_id WHERE a.name = %s",
                (agent,),
            )
        ]
        spent = conn.execute(
            "SELECT spent_usd, reserved_usd FROM sigledger.budget_status((SELECT id FROM sigledger.agent_registry"
            " WHERE name = %s))",
            (agent,),
        ).fetchone()
    extra = sorted(k for k in keys if k.endswith(":extra"))
    settled = [k for k in keys if k.startswith("reservation:")]
    assert extra == sorted(f"async-{i}:extra" for i in range(REQUESTS))
    assert len(settled) == len(set(settled)) == REQUESTS and len(keys) == 2 * REQUESTS
    assert spent == (Decimal("2.400"), Decimal(0)), spent
