"""A real asyncio application for tests/budget/test_async_app.py: a bare ASGI app served by uvicorn, as an agent
backend would use sigledger. Lifespan startup opens an AsyncDatabase, an AsyncCostTracker (with its signal
handlers installed after uvicorn's) and an AsyncBudgetGuard; shutdown closes the tracker, then the pool.

GET /call?agent=<name>&key=<k>  reserve 0.01 through the guard (by agent name), "call the LLM" (a short sleep),
                                set the cost, settle; and record a second cost through the tracker.
GET /status?agent=<name>         budget_status through the async client.
GET /lag                         the event-loop lags seen by the probe (seconds): p50, p95, max, and the count.
GET /lag/reset                   forget the lags seen so far (the test measures during its load only).

Settings from the environment: APP_DSN, APP_SPOOL.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from sigledger import AsyncBudgetClient, AsyncBudgetGuard, AsyncCostTracker, AsyncDatabase, CostRecord

PROBE_INTERVAL = 0.005

state: dict[str, Any] = {"lags": []}


async def probe() -> None:
    """Loop-lag probe: sleeps PROBE_INTERVAL and records by how much later than asked it woke up."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(PROBE_INTERVAL)
        state["lags"].append(loop.time() - started - PROBE_INTERVAL)


async def startup() -> None:
    db = AsyncDatabase(os.environ["APP_DSN"], min_size=2, max_size=10)
    await db.open()
    tracker = AsyncCostTracker(db, os.environ["APP_SPOOL"], batch_size=200, flush_interval=0.2)
    await tracker.start()
    tracker.install_signal_handlers()  # after uvicorn's: chains to it
    state.update(
        db=db,
        tracker=tracker,
        guard=AsyncBudgetGuard(db, tracker=tracker),
        client=AsyncBudgetClient(db),
        probe=asyncio.get_running_loop().create_task(probe()),
    )


async def shutdown() -> None:
    state["probe"].cancel()
    await state["tracker"].close()
    await state["db"].close()
    print("SHUTDOWN COMPLETE", flush=True)


async def call(agent: str, key: str) -> dict[str, Any]:
    async with state["guard"].reserve(agent, Decimal("0.01"), key=key) as r:
        await asyncio.sleep(0.002)  # the LLM call
        r.set_cost(Decimal("0.007"), input_tokens=10, output_tokens=5, model="m", provider="p")
    await state["tracker"].record(
        CostRecord(
            agent_id=agent, model="m", provider="p", cost_usd=Decimal("0.001"), idempotency_key=key + ":extra"
        )
    )
    return {"outcome": r.outcome, "reservation_id": r.reservation_id}


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[..., Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    if scope["path"] == "/call":
        body: Any = await call(query["agent"], query["key"])
    elif scope["path"] == "/status":
        body = await state["client"].status(query["agent"])
    elif scope["path"] == "/lag/reset":
        state["lags"] = []
        body = {"reset": True}
    elif scope["path"] == "/lag":
        lags = sorted(state["lags"]) or [0.0]
        body = {
            "probes": len(state["lags"]),
            "p50": lags[len(lags) // 2],
            "p95": lags[int(len(lags) * 0.95)],
            "max": lags[-1],
        }
    else:
        body = {"error": "not found"}
    data = json.dumps(body, default=str).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
