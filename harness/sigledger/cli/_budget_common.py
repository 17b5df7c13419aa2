"""Helpers shared by the agent, cost and budget command groups."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from sigledger.budget import BudgetClient
from sigledger.cli.options import resolve_dsn
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


def open_db(dsn: str | None) -> Database:
    return Database(
        resolve_dsn(dsn), min_size=1, max_size=2, application_name="sigledger-cli", timeout=10
    ).open()


def resolve_agent(client: BudgetClient, agent: str) -> str:
    """An agent given by id or by name."""
    try:
        return str(uuid.UUID(agent))
    except ValueError:
        return client.find_agent(agent)


def emit(rows: list[dict[str, Any]] | dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    items = rows if isinstance(rows, list) else [rows]
    if not items:
        click.echo("(none)")
        return
    keys = list(items[0].keys())
    widths = {k: max(len(k), *(len(_fmt(r[k])) for r in items)) for k in keys}
    click.echo("  ".join(k.ljust(widths[k]) for k in keys))
    for r in items:
        click.echo("  ".join(_fmt(r[k]).ljust(widths[k]) for k in keys))


def _fmt(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return "" if value is None else str(value)
