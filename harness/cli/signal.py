"""`sigledger signal`: Signal ingestion (issue 4)."""

from __future__ import annotations

import click


@click.group("signal")
def group() -> None:
    """Signal ingestion (issue 4)."""
