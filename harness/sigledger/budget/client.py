"""``BudgetClient``: one method per SQL function of the budget API, each call in its own transaction."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from sigledger.core.db import Database


class BudgetClient:
    """Thin calls of the budget API; each runs in its own transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_agent(
        self,
        name: str,
        limit_usd: Decimal | None = None,
        *,
        period: str = "none",
        grace_ratio: Decimal = Decimal(0),
        fail_policy: str = "closed",
        alert_thresholds: list[Decimal] | None = None,
        parent_budget_id: int | None = None,
    ) -> str:
        row = self.db.call_one(
            "SELECT sigledger.create_agent(p_name => %s::text, p_limit_usd => %s::numeric, p_period => %s::text,"
            " p_grace_ratio => %s::numeric, p_fail_policy => %s::text,"
            " p_alert_thresholds => coalesce(%s::numeric[], '{0.8,1.0}'), p_parent_budget_id => %s::bigint) AS id",
            (name, limit_usd, period, grace_ratio, fail_policy, alert_thresholds, parent_budget_id),
        )
        assert row is not None
        return str(row["id"])

    def find_agent(self, name: str) -> str:
        row = self.db.call_one("SELECT sigledger.find_agent(p_name => %s::text) AS id", (name,))
        assert row is not None
        return str(row["id"])

    def set_budget(
        self,
        agent_id: str,
        limit_usd: Decimal | None = None,
        *,
        period: str | None = None,
        grace_ratio: Decimal | None = None,
        fail_policy: str | None = None,
        alert_thresholds: list[Decimal] | None = None,
        parent_budget_id: int | None = None,
    ) -> int:
        row = self.db.call_one(
            "SELECT sigledger.set_budget(p_agent_id => %s::uuid, p_limit_usd => %s::numeric, p_period => %s::text,"
            " p_grace_ratio => %s::numeric, p_fail_policy => %s::text, p_alert_thresholds => %s::numeric[],"
            " p_parent_budget_id => %s::bigint) AS id",
            (agent_id, limit_usd, period, grace_ratio, fail_policy, alert_thresholds, parent_budget_id),
        )
        assert row is not None
        return int(row["id"])

    def reserve(self, agent_id: str, estimate_usd: Decimal, ttl_seconds: float, key: str) -> dict[str, Any]:
        row = self.db.call_one(
            "SELECT reservation_id, remaining_usd, expires_at, fail_policy, replayed FROM sigledger.reserve_budget("
            "p_agent_id => %s::uuid, p_estimate_usd => %s::numeric, p_ttl => make_interval(secs => %s::float8),"
            " p_idempotency_key => %s::text)",
            (agent_id, estimate_usd, ttl_seconds, key),
        )
        assert row is not None
        return row

    def settle(
        self,
        reservation_id: int,
        actual_usd: Decimal | None,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        model: str = "unspecified",
        provider: str = "unspecified",
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        row = self.db.call_one(
            "SELECT ledger_id, reservation_id, estimate_usd, actual_usd, overrun_usd, replayed"
            " FROM sigledger.settle_budget(p_reservation_id => %s::bigint, p_actual_usd => %s::numeric,"
            " p_input_tokens => %s::bigint, p_output_tokens => %s::bigint, p_model => %s::text,"
            " p_provider => %s::text, p_metadata => %s::jsonb)",
            (reservation_id, actual_usd, input_tokens, output_tokens, model, provider, Jsonb(metadata or {})),
        )
        assert row is not None
        return row

    def release(self, reservation_id: int) -> str:
        row = self.db.call_one(
            "SELECT sigledger.release_budget(p_reservation_id => %s::bigint) AS state", (reservation_id,)
        )
        assert row is not None
        return str(row["state"])

    def expire(self, limit: int = 10000) -> int:
        row = self.db.call_one("SELECT sigledger.expire_reservations(p_limit => %s::integer) AS n", (limit,))
        assert row is not None
        return int(row["n"])

    def ensure_partitions(self, months_ahead: int = 3) -> int:
        """Creates the missing monthly ledger partitions up to months_ahead months ahead; returns how many."""
        row = self.db.call_one(
            "SELECT sigledger.ensure_ledger_partitions(p_months_ahead => %s::integer) AS n", (months_ahead,)
        )
        assert row is not None
        return int(row["n"])

    def reconcile(self, repair: bool = False) -> list[dict[str, Any]]:
        return self.db.call("SELECT * FROM sigledger.reconcile_budgets(p_repair => %s::boolean)", (repair,))

    def status(self, agent_id: str) -> list[dict[str, Any]]:
        return self.db.call("SELECT * FROM sigledger.budget_status(p_agent_id => %s::uuid)", (agent_id,))

    def check_and_record(
        self, agent_id: str, cost_usd: Decimal, expected_version: int | None = None, nowait: bool = False
    ) -> dict[str, Any]:
        row = self.db.call_one(
            "SELECT allowed, remaining_usd, version, ledger_id FROM sigledger.check_and_record_budget("
            "p_agent_id => %s::uuid, p_cost_usd => %s::numeric, p_expected_version => %s::bigint,"
            " p_nowait => %s::boolean)",
            (agent_id, cost_usd, expected_version, nowait),
        )
        assert row is not None
        return row

    def alerts_after(self, after_id: int = 0) -> list[dict[str, Any]]:
        return self.db.call(
            "SELECT * FROM sigledger.budget_alerts_after(p_after_id => %s::bigint)", (after_id,)
        )
