"""`sigledger graph`: Neo4j projection (issue 5)."""

from __future__ import annotations

import click


@click.group("graph")
def group() -> None:
    """Neo4j projection (issue 5)."""
