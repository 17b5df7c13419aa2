"""`sigledger entity`: Entity lookup by name or alias."""

from __future__ import annotations

import sys

import click

from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.core.db import Database
from sigledger.ingest.client import resolve_entity


@click.group("entity")
def group() -> None:
    """Entity lookup by name or alias.

    Find an entity by any of its names (aliases, case-insensitive).
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
