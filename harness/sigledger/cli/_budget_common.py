"""Helpers shared by the agent, cost, budget, reservation and price command groups."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import click

from sigledger.cli.options import open_database
from sigledger.core.db import Database


class DecimalType(click.ParamType):
    """A decimal amount as text (no float rounding). NaN and Infinity pass through: the database refuses them
    with a message naming the value."""

    name = "decimal"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Decimal:
        if isinstance(value, Decimal):
            return value
        try:
            return Decimal(str(value).strip())
        except InvalidOperation:
            self.fail(f"{value!r} is not a number", param, ctx)


DECIMAL = DecimalType()
PERIODS = click.Choice(["none", "daily", "weekly", "monthly"])
POLICIES = click.Choice(["open", "closed"])
F = TypeVar("F", bound=Callable[..., Any])


def _thresholds(
    ctx: click.Context, param: click.Parameter, value: tuple[Decimal, ...]
) -> list[Decimal] | None:
    return list(value) or None


def budget_options(*, change: bool = False, parent_help: str | None = None) -> Callable[[F], F]:
    """--period, --grace, --fail-policy, --alert, --parent-budget of a budget, handed to the command under the
    library's keyword names (period, grace_ratio, fail_policy, alert_thresholds, parent_budget_id) so that it
    passes them on as they are (``BudgetClient.create_agent(name, limit, **settings)``). A budget being created
    gets the database's creation defaults; with ``change`` every default is None (keep the current value)."""

    def default(value: Any) -> dict[str, Any]:
        return {"default": None} if change else {"default": value, "show_default": True}

    def decorate(func: F) -> F:
        func = click.option("--parent-budget", "parent_budget_id", type=int, default=None, help=parent_help)(
            func
        )
        func = click.option(
            "--alert",
            "alert_thresholds",
            type=DECIMAL,
            multiple=True,
            callback=_thresholds,
            help="Alert threshold as a fraction of the limit (repeat"
            + ("; replaces the current ones)." if change else ")."),
        )(func)
        func = click.option(
            "--fail-policy", type=POLICIES, help="While the database is down.", **default("closed")
        )(func)
        func = click.option(
            "--grace", "grace_ratio", type=DECIMAL, help="0 = hard limit.", **default(Decimal(0))
        )(func)
        return click.option(
            "--period", type=PERIODS, help="Budget period (UTC calendar).", **default("none")
        )(func)

    return decorate


_UNITS = {"d": "days", "h": "hours", "m": "minutes", "w": "weeks"}


class InstantType(click.ParamType):
    """A point in time: ISO 8601 (a date means its midnight UTC; no zone means UTC), `now`, `today`, `week`
    or `month` (the start of the current UTC day, ISO week, month), or an offset from now such as `-7d`,
    `-12h`, `-30m`, `-2w`."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        text = str(value).strip()
        now = dt.datetime.now(dt.UTC)
        if text == "now":
            return now
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if text == "today":
            return midnight
        if text == "week":
            return midnight - dt.timedelta(days=midnight.weekday())
        if text == "month":
            return midnight.replace(day=1)
        if text[:1] in "+-" and text[-1:] in _UNITS:
            try:
                amount = float(text[:-1])
            except ValueError:
                self.fail(f"{text!r} is not an offset like -7d, -12h, -30m", param, ctx)
            return now + dt.timedelta(**{_UNITS[text[-1]]: amount})
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(
                f"{text!r} is not a time (ISO 8601, now, today, week, month, or an offset like -7d)",
                param,
                ctx,
            )
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


INSTANT = InstantType()


def open_db(dsn: str | None, application_name: str = "sigledger-cli") -> Database:
    return open_database(dsn, application_name)
