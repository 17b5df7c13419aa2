"""``ReportClient``: one method per function of the read API; rows as dicts (numeric as Decimal)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from sigledger.core.db import Database

Row = dict[str, Any]

DIMENSIONS = ("agent", "team", "org", "model", "provider", "day", "week", "month", "tag")
#: output columns of spend_report whose values identify a group (merging chunks keys on them)
GROUP_KEYS = ("bucket", "agent_id", "agent", "team", "org", "model", "provider", "tag")
SUMS = ("spend_usd", "calls", "input_tokens", "output_tokens")


def _report_order(row: Row) -> tuple[Any, ...]:
    """spend_report's ORDER BY: bucket, spend descending, then the names (NULLs last, as in SQL)."""
    names = tuple(
        (row[k] is None, row[k] or "") for k in ("agent", "team", "org", "model", "provider", "tag")
    )
    earliest = dt.datetime.min.replace(tzinfo=dt.UTC)
    return (row["bucket"] is None, row["bucket"] or earliest, -row["spend_usd"], *names)


class ReportClient:
    def __init__(self, db: Database) -> None:
        self.db = db

    def spend_report(
        self,
        since: dt.datetime,
        until: dt.datetime,
        by: Sequence[str] = ("agent",),
        *,
        agent_id: str | None = None,
        budget_id: int | None = None,
        tag_key: str = "tag",
    ) -> list[Row]:
        return self.db.call(
            "SELECT * FROM sigledger.spend_report(p_since => %s::timestamptz, p_until => %s::timestamptz,"
            " p_by => %s::text[], p_agent_id => %s::uuid, p_budget_id => %s::bigint, p_tag_key => %s::text)",
            (since, until, list(by), agent_id, budget_id, tag_key),
        )

    def spend_report_chunked(
        self,
        chunks: Sequence[tuple[dt.datetime, dt.datetime]],
        by: Sequence[str],
        progress: Callable[[int, int, int], None],
        **kwargs: Any,
    ) -> list[Row]:
        """The same report as one call over the union of the chunks (spend, calls and tokens add up), one
        call per chunk; progress(chunk number, of, ledger calls so far) after each."""
        merged: dict[tuple[Any, ...], Row] = {}
        total: Row | None = None
        calls = 0
        for n, (since, until) in enumerate(chunks, start=1):
            for row in self.spend_report(since, until, by, **kwargs):
                if row["is_total"]:
                    calls += int(row["calls"])
                    if total is None:
                        total = dict(row)
                    else:
                        for k in SUMS:
                            total[k] += row[k]
                    continue
                key = tuple(row[k] for k in GROUP_KEYS)
                if key in merged:
                    for k in SUMS:
                        merged[key][k] += row[k]
                else:
                    merged[key] = dict(row)
            progress(n, len(chunks), calls)
        rows = sorted(merged.values(), key=_report_order)
        assert total is not None  # every call returns its total row
        return [*rows, total]

    def spend_top(
        self,
        since: dt.datetime,
        until: dt.datetime,
        by: Sequence[str] = ("agent",),
        limit: int = 10,
        *,
        tag_key: str = "tag",
    ) -> list[Row]:
        return self.db.call(
            "SELECT * FROM sigledger.spend_top(p_since => %s::timestamptz, p_until => %s::timestamptz,"
            " p_by => %s::text[], p_limit => %s::integer, p_tag_key => %s::text)",
            (since, until, list(by), limit, tag_key),
        )

    def budget_tree(self) -> list[Row]:
        return self.db.call("SELECT * FROM sigledger.budget_tree()")

    def near_limit(self, threshold: Decimal = Decimal("0.8"), level: str | None = None) -> list[Row]:
        return self.db.call(
            "SELECT * FROM sigledger.budgets_near_limit(p_threshold => %s::numeric, p_level => %s::text)",
            (threshold, level),
        )

    def agents(self) -> list[Row]:
        return self.db.call("SELECT * FROM sigledger.list_agents()")

    def open_reservations(self, agent_id: str | None = None, limit: int = 1000) -> list[Row]:
        return self.db.call(
            "SELECT * FROM sigledger.open_reservations(p_agent_id => %s::uuid, p_limit => %s::integer)",
            (agent_id, limit),
        )

    def overruns(
        self, since: dt.datetime, until: dt.datetime, agent_id: str | None = None, limit: int = 1000
    ) -> list[Row]:
        return self.db.call(
            "SELECT * FROM sigledger.overrun_report(p_since => %s::timestamptz, p_until => %s::timestamptz,"
            " p_agent_id => %s::uuid, p_limit => %s::integer)",
            (since, until, agent_id, limit),
        )

    def prices(
        self, provider: str | None = None, model: str | None = None, history: bool = False
    ) -> list[Row]:
        return self.db.call(
            "SELECT * FROM sigledger.list_model_prices(p_provider => %s::text, p_model => %s::text,"
            " p_history => %s::boolean)",
            (provider, model, history),
        )

    def alert_feed(self, after_id: int = 0, limit: int = 1000) -> list[Row]:
        return self.db.call(
            "SELECT alert_id, document FROM sigledger.budget_alert_feed(p_after_id => %s::bigint,"
            " p_limit => %s::integer)",
            (after_id, limit),
        )

    def alert_sinks(self) -> list[Row]:
        return self.db.call("SELECT * FROM sigledger.alert_sink_status()")

    # administration (sigledger_admin)

    def quarantine(self, include_resolved: bool = False, limit: int = 100) -> list[Row]:
        return self.db.call(
            "SELECT * FROM sigledger.quarantine_list(p_include_resolved => %s::boolean, p_limit => %s::integer)",
            (include_resolved, limit),
        )

    def resubmit(self, quarantine_id: int, changes: dict[str, Any]) -> Row:
        row = self.db.call_one(
            "SELECT * FROM sigledger.quarantine_resubmit(p_quarantine_id => %s::bigint, p_changes => %s::jsonb)",
            (quarantine_id, Jsonb(changes)),
        )
        assert row is not None
        return row

    def add_price(
        self,
        provider: str,
        model: str,
        input_usd_per_mtok: Decimal,
        output_usd_per_mtok: Decimal,
        valid_from: dt.datetime | None = None,
    ) -> dt.datetime:
        row = self.db.call_one(
            "SELECT sigledger.add_model_price(p_provider => %s::text, p_model => %s::text,"
            " p_input_usd_per_mtok => %s::numeric, p_output_usd_per_mtok => %s::numeric,"
            " p_valid_from => %s::timestamptz) AS valid_from",
            (provider, model, input_usd_per_mtok, output_usd_per_mtok, valid_from),
        )
        assert row is not None
        return row["valid_from"]

    def create_group_budget(
        self,
        level: str,
        name: str,
        limit_usd: Decimal,
        *,
        period: str = "none",
        grace_ratio: Decimal = Decimal(0),
        fail_policy: str = "closed",
        alert_thresholds: list[Decimal] | None = None,
        parent_budget_id: int | None = None,
    ) -> int:
        row = self.db.call_one(
            "SELECT sigledger.create_group_budget(p_level => %s::text, p_name => %s::text,"
            " p_limit_usd => %s::numeric, p_period => %s::text, p_grace_ratio => %s::numeric,"
            " p_fail_policy => %s::text, p_alert_thresholds => coalesce(%s::numeric[], '{0.8,1.0}'),"
            " p_parent_budget_id => %s::bigint) AS id",
            (level, name, limit_usd, period, grace_ratio, fail_policy, alert_thresholds, parent_budget_id),
        )
        assert row is not None
        return int(row["id"])
