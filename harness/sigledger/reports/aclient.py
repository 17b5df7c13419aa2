# async source: the sync twin client.py is generated from this file by tools/async_to_sync.py (make sync-gen).
"""``AsyncReportClient``: one method per function of the read API (sql/functions/160-175), each call in its own
transaction; rows as dicts.

Every read is a read-only SQL function, so a client on a hot standby's pool works (log in as
sigledger_readonly). Agents are named by id or by name (resolved in the same statement); a threshold is a
Decimal or an int (a float raises TypeError, sigledger.core.money); every amount returned is normalised (no
``0E-10``). Creating group budgets and prices is the budget API's: ``AsyncBudgetClient.create_group_budget``
and ``.add_model_price``. tests/core/test_client_contract.py checks that every API function has a method.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from sigledger.core.adb import AsyncDatabase
from sigledger.core.money import money, normalize_row
from sigledger.ledger.records import optional_agent_sql
from sigledger.reports.spend import ChunkedReport, Row

Agent = str | uuid.UUID


class AsyncReportClient:
    """Thin calls of the read API; each runs in its own transaction."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db

    async def _rows(self, sql: str, params: Any = None) -> list[Row]:
        return [normalize_row(r) for r in await self.db.call(sql, params)]

    # spend (sigledger_readonly, sigledger_app, sigledger_admin) -----------------------------------------------
    async def spend_report(
        self,
        since: dt.datetime,
        until: dt.datetime,
        by: Sequence[str] = ("agent",),
        *,
        agent: Agent | None = None,
        budget_id: int | None = None,
        tag_key: str = "tag",
    ) -> list[Row]:
        """Spend, calls and tokens over [since, until) grouped by the dimensions of ``by`` (reports.DIMENSIONS),
        then a total row (``is_total``); only one agent's, or the agents under one budget, when given."""
        return await self._rows(
            "SELECT * FROM sigledger.spend_report(p_since => %s::timestamptz, p_until => %s::timestamptz,"
            " p_by => %s::text[], "
            + optional_agent_sql(agent)
            + ", p_budget_id => %s::bigint, p_tag_key => %s::text)",
            (since, until, list(by), None if agent is None else str(agent), budget_id, tag_key),
        )

    async def spend_report_chunked(
        self,
        chunks: Sequence[tuple[dt.datetime, dt.datetime]],
        by: Sequence[str],
        progress: Callable[[int, int, int], None],
        **kwargs: Any,
    ) -> list[Row]:
        """The same report as one call over the union of the chunks, one call per chunk; progress(chunk
        number, of, ledger calls so far) after each."""
        merged = ChunkedReport()
        for n, (since, until) in enumerate(chunks, start=1):
            merged.add(await self.spend_report(since, until, by, **kwargs))
            progress(n, len(chunks), merged.calls)
        return merged.rows()

    async def spend_top(
        self,
        since: dt.datetime,
        until: dt.datetime,
        by: Sequence[str] = ("agent",),
        limit: int = 10,
        *,
        tag_key: str = "tag",
    ) -> list[Row]:
        """The ``limit`` largest groups by spend over [since, until), ranked."""
        return await self._rows(
            "SELECT * FROM sigledger.spend_top(p_since => %s::timestamptz, p_until => %s::timestamptz,"
            " p_by => %s::text[], p_limit => %s::integer, p_tag_key => %s::text)",
            (since, until, list(by), limit, tag_key),
        )

    # budgets, agents, reservations, prices ----------------------------------------------------------------------
    async def budget_tree(self) -> list[Row]:
        """Every budget, org -> team -> agent, with its current period: limit, spent, reserved, used_ratio."""
        return await self._rows("SELECT * FROM sigledger.budget_tree()")

    async def near_limit(
        self, threshold: Decimal | int = Decimal("0.8"), level: str | None = None
    ) -> list[Row]:
        """Budgets at every level (or one) whose spent + reserved reach threshold x limit, fullest first."""
        return await self._rows(
            "SELECT * FROM sigledger.budgets_near_limit(p_threshold => %s::numeric, p_level => %s::text)",
            (money(threshold, "threshold"), level),
        )

    async def agents(self) -> list[Row]:
        """Every agent: its team and org, its own budget's current period, its open reservations."""
        return await self._rows("SELECT * FROM sigledger.list_agents()")

    async def open_reservations(self, agent: Agent | None = None, limit: int = 1000) -> list[Row]:
        """Open reservations (of one agent), soonest expiry first."""
        return await self._rows(
            "SELECT * FROM sigledger.open_reservations("
            + optional_agent_sql(agent)
            + ", p_limit => %s::integer)",
            (None if agent is None else str(agent), limit),
        )

    async def overruns(
        self, since: dt.datetime, until: dt.datetime, agent: Agent | None = None, limit: int = 1000
    ) -> list[Row]:
        """Reservations settled above their estimate in [since, until), largest overrun first."""
        return await self._rows(
            "SELECT * FROM sigledger.overrun_report(p_since => %s::timestamptz, p_until => %s::timestamptz, "
            + optional_agent_sql(agent)
            + ", p_limit => %s::integer)",
            (since, until, None if agent is None else str(agent), limit),
        )

    async def prices(
        self, provider: str | None = None, model: str | None = None, history: bool = False
    ) -> list[Row]:
        """Current and scheduled prices (history: every price ever) by provider and model."""
        return await self._rows(
            "SELECT * FROM sigledger.list_model_prices(p_provider => %s::text, p_model => %s::text,"
            " p_history => %s::boolean)",
            (provider, model, history),
        )

    # alerts --------------------------------------------------------------------------------------------------
    async def alert_feed(self, after_id: int = 0, limit: int = 1000) -> list[Row]:
        """Stored alerts after after_id as documents (the shape `budget watch` prints), oldest first."""
        return await self._rows(
            "SELECT alert_id, document FROM sigledger.budget_alert_feed(p_after_id => %s::bigint,"
            " p_limit => %s::integer)",
            (after_id, limit),
        )

    async def alert_sinks(self) -> list[Row]:
        """Each alert sink (webhook) with its delivered and pending counts."""
        return await self._rows("SELECT * FROM sigledger.alert_sink_status()")

    # quarantine (sigledger_admin) ----------------------------------------------------------------------------
    async def quarantine(self, include_resolved: bool = False, limit: int = 100) -> list[Row]:
        """Batch rows the ledger refused, oldest first: SQLSTATE, reason, the payload as received."""
        return await self._rows(
            "SELECT * FROM sigledger.quarantine_list(p_include_resolved => %s::boolean, p_limit => %s::integer)",
            (include_resolved, limit),
        )

    async def resubmit(self, quarantine_id: int, changes: dict[str, Any]) -> Row:
        """Record quarantined row quarantine_id (its fields replaced by ``changes``) and mark it resolved."""
        rows = await self._rows(
            "SELECT * FROM sigledger.quarantine_resubmit(p_quarantine_id => %s::bigint, p_changes => %s::jsonb)",
            (quarantine_id, Jsonb(changes)),
        )
        assert rows, "quarantine_resubmit returns one row"
        return rows[0]
