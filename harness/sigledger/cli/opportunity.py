"""`sigledger opportunity`: Opportunity merges."""

from __future__ import annotations

import uuid

import click

from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.core.db import Database
from sigledger.ingest.client import merge_opportunities


@click.group("opportunity")
def group() -> None:
    """Opportunity merges.

    Merge duplicate opportunities into one; the merged ones become tombstones that point at it.
    """


@group.command("merge")
@click.argument("target", type=click.UUID)
@click.argument("sources", type=click.UUID, nargs=-1, required=True)
@dsn_option
def merge(target: uuid.UUID, sources: tuple[uuid.UUID, ...], dsn: str | None) -> None:
    """Merge the SOURCE opportunities into TARGET in one transaction (see docs/merge-rules.md).

    Errors: SLM02 bad input (target among the sources, duplicates), P0002 unknown id, SLM01 an id was
    already merged (the message names the tombstone). Nothing changes on any error."""
    with Database(resolve_dsn(dsn), application_name="sigledger-opportunity-merge", max_size=1) as db:
        result = merge_opportunities(db, target, list(sources))
    click.echo(
        f"merged {len(sources)} into {result['target_id']}: {result['moved_links']} signal links moved, "
        f"{result['duplicate_links']} duplicates dropped (merge #{result['merge_id']})"
    )
