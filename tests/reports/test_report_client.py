"""The read API from Python (issues 9 and 15): ``AsyncReportClient`` and its generated twin ``ReportClient`` give
the same answers, as sigledger_readonly; agents by name or id; amounts normalised; a float refused; a report
read chunk by chunk equals the report read at once."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sigledger import AsyncDatabase, Database
from sigledger.core.errors import NotFound
from sigledger.reports import AsyncReportClient, ReportClient

from tests.reports.test_read_api import NOW, seed

SINCE, UNTIL = NOW - dt.timedelta(days=30), NOW + dt.timedelta(seconds=1)


def test_async_and_sync_clients_agree_and_take_agents_by_name(
    conn: psycopg.Connection, readonly_dsn: str
) -> None:
    ids = seed(conn)["agents"]
    with Database(readonly_dsn) as db:
        client = ReportClient(db)
        by_agent = client.spend_report(SINCE, UNTIL, ["agent"])
        by_name = client.spend_report(SINCE, UNTIL, ["day", "model"], agent="ra")
        by_id = client.spend_report(SINCE, UNTIL, ["day", "model"], agent=ids["ra"])
        tree = client.budget_tree()
        near = client.near_limit(Decimal("0.1"))
        with pytest.raises(NotFound, match="nobody"):
            client.open_reservations("nobody")
        with pytest.raises(TypeError, match=r"threshold: a float \(0.8\)"):
            client.near_limit(0.8)  # type: ignore[arg-type]

    async def main() -> tuple[list[dict[str, Any]], ...]:
        async with AsyncDatabase(readonly_dsn) as adb:
            aclient = AsyncReportClient(adb)
            return await asyncio.gather(
                aclient.spend_report(SINCE, UNTIL, ["agent"]),
                aclient.spend_report(SINCE, UNTIL, ["day", "model"], agent="ra"),
                aclient.budget_tree(),
                aclient.near_limit(Decimal("0.1")),
            )

    assert asyncio.run(main()) == [by_agent, by_name, tree, near]
    assert by_name == by_id and by_name[-1]["spend_usd"] == Decimal("3.5")
    assert [r["agent"] for r in by_agent if not r["is_total"]] == ["ra", "rc", "rb"]
    # normalised: no 0E-10, no trailing zeros of the column's scale, no exponent
    amounts = [v for r in by_agent + tree for k, v in r.items() if k.endswith("_usd") and v is not None]
    assert amounts and all(v == v.normalize() and "E" not in str(v) for v in amounts), amounts
    assert Decimal("0") in [r["reserved_usd"] for r in tree]


def test_a_report_read_chunk_by_chunk_equals_the_report_read_at_once(
    conn: psycopg.Connection, readonly_dsn: str
) -> None:
    seed(conn)
    middle = NOW - dt.timedelta(days=2)
    seen: list[tuple[int, int, int]] = []
    with Database(readonly_dsn) as db:
        client = ReportClient(db)
        for by in (["agent"], ["model", "provider"], ["day"]):
            whole = client.spend_report(SINCE, UNTIL, by)
            chunked = client.spend_report_chunked(
                [(SINCE, middle), (middle, UNTIL)], by, lambda *a: seen.append(a)
            )
            assert chunked == whole, by
    assert seen[:2] == [(1, 2, 1), (2, 2, 5)]  # chunk, of, ledger calls so far
