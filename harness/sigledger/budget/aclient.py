# async source: the sync twin client.py is generated from this file by tools/async_to_sync.py (make sync-gen).
"""``AsyncBudgetClient``: one method per SQL function of the budget API, each call in its own transaction.

Agents are named by id or by name everywhere (a name is resolved in the same statement). Amounts are Decimal or
int (a float raises TypeError, sigledger.core.money); every amount returned is normalized (no ``0E-10``).
tests/core/test_client_contract.py checks that every API function of the database has a method here, in
``AsyncLedger`` or in a listed exception, so a function added later without one fails that test.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from sigledger.core.adb import AsyncDatabase
from sigledger.core.money import money, normalize_row, optional_money
from sigledger.ledger.records import agent_sql

Agent = str | uuid.UUID


def _ratios(values: list[Any] | None, name: str) -> list[Decimal] | None:
    return None if values is None else [money(v, name) for v in values]


class AsyncBudgetClient:
    """Thin calls of the budget API; each runs in its own transaction."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db

    async def _one(self, sql: str, params: Any, *, read_committed: bool = False) -> dict[str, Any]:
        row = await self.db.call_one(sql, params, read_committed=read_committed)
        assert row is not None, sql
        return normalize_row(row)

    async def _rows(
        self, sql: str, params: Any = None, *, read_committed: bool = False
    ) -> list[dict[str, Any]]:
        return [normalize_row(r) for r in await self.db.call(sql, params, read_committed=read_committed)]

    # agents and budgets (sigledger_admin) --------------------------------------------------------------------
    async def create_agent(
        self,
        name: str,
        limit_usd: Decimal | int | None = None,
        *,
        period: str = "none",
        grace_ratio: Decimal | int = 0,
        fail_policy: str = "closed",
        alert_thresholds: list[Decimal] | None = None,
        parent_budget_id: int | None = None,
    ) -> str:
        """Register an agent (and its budget when limit_usd is given); returns its id."""
        row = await self._one(
            "SELECT sigledger.create_agent(p_name => %s::text, p_limit_usd => %s::numeric, p_period => %s::text,"
            " p_grace_ratio => %s::numeric, p_fail_policy => %s::text,"
            " p_alert_thresholds => coalesce(%s::numeric[], '{0.8,1.0}'), p_parent_budget_id => %s::bigint) AS id",
            (
                name,
                optional_money(limit_usd, "limit_usd"),
                period,
                money(grace_ratio, "grace_ratio"),
                fail_policy,
                _ratios(alert_thresholds, "alert_thresholds"),
                parent_budget_id,
            ),
        )
        return str(row["id"])

    async def find_agent(self, name: str) -> str:
        """The id of the agent with this name (NotFound when there is none)."""
        row = await self._one("SELECT sigledger.find_agent(p_name => %s::text) AS id", (name,))
        return str(row["id"])

    async def set_budget(
        self,
        agent: Agent,
        limit_usd: Decimal | int | None = None,
        *,
        period: str | None = None,
        grace_ratio: Decimal | int | None = None,
        fail_policy: str | None = None,
        alert_thresholds: list[Decimal] | None = None,
        parent_budget_id: int | None = None,
    ) -> int:
        """Create or change an agent's budget (None keeps the current value); returns the budget id."""
        row = await self._one(
            "SELECT sigledger.set_budget("
            + agent_sql(agent)
            + ", p_limit_usd => %s::numeric, p_period => %s::text, p_grace_ratio => %s::numeric,"
            " p_fail_policy => %s::text, p_alert_thresholds => %s::numeric[], p_parent_budget_id => %s::bigint) AS id",
            (
                str(agent),
                optional_money(limit_usd, "limit_usd"),
                period,
                optional_money(grace_ratio, "grace_ratio"),
                fail_policy,
                _ratios(alert_thresholds, "alert_thresholds"),
                parent_budget_id,
            ),
            read_committed=True,  # a change re-caps the budget's periods: READ COMMITTED only (25000)
        )
        return int(row["id"])

    async def create_group_budget(
        self,
        level: str,
        name: str,
        limit_usd: Decimal | int,
        *,
        period: str = "none",
        grace_ratio: Decimal | int = 0,
        fail_policy: str = "closed",
        alert_thresholds: list[Decimal] | None = None,
        parent_budget_id: int | None = None,
    ) -> int:
        """A team or org budget (agents' budgets name it as parent_budget_id); returns its id."""
        row = await self._one(
            "SELECT sigledger.create_group_budget(p_level => %s::text, p_name => %s::text, p_limit_usd => %s::numeric,"
            " p_period => %s::text, p_grace_ratio => %s::numeric, p_fail_policy => %s::text,"
            " p_alert_thresholds => coalesce(%s::numeric[], '{0.8,1.0}'), p_parent_budget_id => %s::bigint) AS id",
            (
                level,
                name,
                money(limit_usd, "limit_usd"),
                period,
                money(grace_ratio, "grace_ratio"),
                fail_policy,
                _ratios(alert_thresholds, "alert_thresholds"),
                parent_budget_id,
            ),
        )
        return int(row["id"])

    async def update_budget(
        self,
        budget_id: int,
        limit_usd: Decimal | int | None = None,
        *,
        period: str | None = None,
        grace_ratio: Decimal | int | None = None,
        fail_policy: str | None = None,
        alert_thresholds: list[Decimal] | None = None,
        parent_budget_id: int | None = None,
    ) -> None:
        """Change any budget (agent, team or org) by id; None keeps the current value."""
        await self.db.call(
            "SELECT sigledger.update_budget(p_budget_id => %s::bigint, p_limit_usd => %s::numeric,"
            " p_period => %s::text, p_grace_ratio => %s::numeric, p_fail_policy => %s::text,"
            " p_alert_thresholds => %s::numeric[], p_parent_budget_id => %s::bigint)",
            (
                budget_id,
                optional_money(limit_usd, "limit_usd"),
                period,
                optional_money(grace_ratio, "grace_ratio"),
                fail_policy,
                _ratios(alert_thresholds, "alert_thresholds"),
                parent_budget_id,
            ),
            read_committed=True,  # as set_budget
        )

    async def add_model_price(
        self,
        provider: str,
        model: str,
        input_usd_per_mtok: Decimal | int,
        output_usd_per_mtok: Decimal | int,
        *,
        valid_from: dt.datetime | None = None,
    ) -> dt.datetime:
        """A price per million tokens from valid_from (default now); returns valid_from."""
        row = await self._one(
            "SELECT sigledger.add_model_price(p_provider => %s::text, p_model => %s::text,"
            " p_input_usd_per_mtok => %s::numeric, p_output_usd_per_mtok => %s::numeric,"
            " p_valid_from => %s::timestamptz) AS valid_from",
            (
                provider,
                model,
                money(input_usd_per_mtok, "input_usd_per_mtok"),
                money(output_usd_per_mtok, "output_usd_per_mtok"),
                valid_from,
            ),
        )
        valid_from_: dt.datetime = row["valid_from"]
        return valid_from_

    async def set_budget_slices(self, budget_id: int, slices: int) -> int:
        """Split a budget's spend over slices (1..64) for a hot budget (docs/budgets.md, Slices)."""
        row = await self._one(
            "SELECT sigledger.set_budget_slices(p_budget_id => %s::bigint, p_slices => %s::integer) AS n",
            (budget_id, slices),
            read_committed=True,  # as set_budget
        )
        return int(row["n"])

    # spending (sigledger_app) ---------------------------------------------------------------------------------
    async def reserve(
        self, agent: Agent, estimate_usd: Decimal | int, ttl_seconds: float, key: str
    ) -> dict[str, Any]:
        """Hold estimate_usd (BudgetExceeded when it does not fit): reservation_id, remaining_usd, expires_at,
        fail_policy, replayed. Idempotent by key."""
        return await self._one(
            "SELECT reservation_id, remaining_usd, expires_at, fail_policy, replayed FROM sigledger.reserve_budget("
            + agent_sql(agent)
            + ", p_estimate_usd => %s::numeric, p_ttl => make_interval(secs => %s::float8),"
            " p_idempotency_key => %s::text)",
            (str(agent), money(estimate_usd, "estimate_usd"), ttl_seconds, key),
        )

    async def settle(
        self,
        reservation_id: int,
        actual_usd: Decimal | int | None,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        model: str = "unspecified",
        provider: str = "unspecified",
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write the ledger row and release the hold (idempotent): ledger_id, estimate, actual, overrun_usd."""
        return await self._one(
            "SELECT ledger_id, reservation_id, estimate_usd, actual_usd, overrun_usd, replayed"
            " FROM sigledger.settle_budget(p_reservation_id => %s::bigint, p_actual_usd => %s::numeric,"
            " p_input_tokens => %s::bigint, p_output_tokens => %s::bigint, p_model => %s::text,"
            " p_provider => %s::text, p_metadata => %s::jsonb)",
            (
                reservation_id,
                optional_money(actual_usd, "actual_usd"),
                input_tokens,
                output_tokens,
                model,
                provider,
                Jsonb(metadata or {}),
            ),
        )

    async def reserve_many(
        self, requests: list[dict[str, Any]], ttl_seconds: float = 600, all_or_nothing: bool = False
    ) -> list[dict[str, Any]]:
        """Many holds in one call (items {agent_id, estimate_usd, idempotency_key?}): one row per item, in order,
        with reservation_id or sqlstate and message."""
        items = [
            {
                **r,
                "estimate_usd": str(money(r["estimate_usd"], "estimate_usd")),
                "agent_id": str(r["agent_id"]),
            }
            for r in requests
        ]
        return await self._rows(
            "SELECT * FROM sigledger.reserve_budgets(p_requests => %s::jsonb,"
            " p_ttl => make_interval(secs => %s::float8), p_all_or_nothing => %s::boolean)",
            (Jsonb(items), ttl_seconds, all_or_nothing),
        )

    async def settle_many(self, settlements: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Many settlements in one call (items {reservation_id, actual_usd?, input_tokens?, ...}): one row per item,
        in order, with ledger_id or sqlstate and message."""
        items = [
            {
                **x,
                "actual_usd": None
                if x.get("actual_usd") is None
                else str(money(x["actual_usd"], "actual_usd")),
            }
            for x in settlements
        ]
        return await self._rows(
            "SELECT * FROM sigledger.settle_budgets(p_settlements => %s::jsonb)", (Jsonb(items),)
        )

    async def release(self, reservation_id: int) -> str:
        """Void a hold; returns the reservation's state."""
        row = await self._one(
            "SELECT sigledger.release_budget(p_reservation_id => %s::bigint) AS state", (reservation_id,)
        )
        return str(row["state"])

    async def check_and_record(
        self,
        agent: Agent,
        cost_usd: Decimal | int,
        expected_version: int | None = None,
        nowait: bool = False,
    ) -> dict[str, Any]:
        """The seed's API, atomic: allowed, remaining_usd, version, ledger_id."""
        return await self._one(
            "SELECT allowed, remaining_usd, version, ledger_id FROM sigledger.check_and_record_budget("
            + agent_sql(agent)
            + ", p_cost_usd => %s::numeric, p_expected_version => %s::bigint, p_nowait => %s::boolean)",
            (str(agent), money(cost_usd, "cost_usd"), expected_version, nowait),
        )

    # reads (sigledger_app, sigledger_readonly) ----------------------------------------------------------------
    async def status(self, agent: Agent) -> list[dict[str, Any]]:
        """The agent's budgets for the current period, one row per level (org, team, agent)."""
        return await self._rows(
            "SELECT * FROM sigledger.budget_status(" + agent_sql(agent) + ")", (str(agent),)
        )

    async def alerts_after(self, after_id: int = 0) -> list[dict[str, Any]]:
        """Budget alerts with an id above after_id, oldest first."""
        return await self._rows(
            "SELECT * FROM sigledger.budget_alerts_after(p_after_id => %s::bigint)", (after_id,)
        )

    # maintenance (sigledger_admin) ----------------------------------------------------------------------------
    async def expire(self, limit: int = 10000) -> int:
        """Release reservations past their TTL (at most limit); returns how many."""
        row = await self._one("SELECT sigledger.expire_reservations(p_limit => %s::integer) AS n", (limit,))
        return int(row["n"])

    async def fire_missed_alerts(self) -> int:
        """Fire the alerts that sliced budget periods reached without firing (two concurrent charges on two
        slices that reach a threshold together); returns how many."""
        row = await self._one("SELECT sigledger.fire_missed_alerts() AS n", ())
        return int(row["n"])

    async def ensure_partitions(self, months_ahead: int = 3) -> int:
        """Create the missing monthly ledger partitions up to months_ahead months ahead; returns how many."""
        row = await self._one(
            "SELECT sigledger.ensure_ledger_partitions(p_months_ahead => %s::integer) AS n", (months_ahead,)
        )
        return int(row["n"])

    async def reconcile(self, repair: bool = False) -> list[dict[str, Any]]:
        """Budget periods whose recorded spend or holds drift from the ledger (repair: fix them)."""
        return await self._rows(
            "SELECT * FROM sigledger.reconcile_budgets(p_repair => %s::boolean)",
            (repair,),
            read_committed=repair,
        )
