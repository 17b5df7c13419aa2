"""`sigledger entity`: Entity lookup by name or alias."""

from __future__ import annotations

import sys

import click

from sigledger.cli import exit_codes
from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.core.db import Database
from sigledger.ingest.client import resolve_entity

ALIAS_CONFLICTS = (
    "SELECT alias, entity_id, sqlstate, reason, holder_alias, holder_entity_id "
    "FROM sigledger.alias_conflicts ORDER BY id LIMIT %s::integer"
)


@click.group("entity")
def group() -> None:
    """Entity lookup by name or alias.

    Find an entity by any of its names (aliases, case-insensitive); list the aliases the text rules set aside.
    """


@group.command("resolve")
@click.argument("name")
@dsn_option
def resolve(name: str, dsn: str | None) -> None:
    """Print the entity whose alias is NAME (case-insensitive). Exit status 1 when there is none."""
    with Database(resolve_dsn(dsn), application_name="sigledger-entity", max_size=1) as db:
        entity = resolve_entity(db, name)
    if entity is None:
        click.secho(f"no entity has the alias {name!r}", fg="yellow", err=True)
        sys.exit(1)
    click.echo(f"{entity['id']}  {entity['name']}  ({entity['entity_type']})")
    click.echo("aliases: " + ", ".join(entity["aliases"]))


@group.command("conflicts")
@click.option(
    "--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True, help="Rows listed."
)
@dsn_option
def conflicts(limit: int, dsn: str | None) -> None:
    """List the aliases that the text-rules migration (V8_021) moved aside because they conflict under the new
    rules (view sigledger.alias_conflicts; docs/text-rules.md says how to resolve them). Exit status 0 when
    there are none, 3 (attention) when there are some."""
    with Database(resolve_dsn(dsn), application_name="sigledger-entity", max_size=1) as db:
        rows = db.call(ALIAS_CONFLICTS, (limit,))
    if not rows:
        click.echo("no alias conflicts")
        return
    for row in rows:
        holder = (
            f" (held by {row['holder_alias']!r} of entity {row['holder_entity_id']})"
            if row["holder_alias"]
            else ""
        )
        click.echo(
            f"{row['alias']!r} of entity {row['entity_id']}: [{row['sqlstate']}] {row['reason']}{holder}"
        )
    sys.exit(exit_codes.ATTENTION)
