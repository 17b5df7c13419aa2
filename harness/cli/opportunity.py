"""`sigledger opportunity`: Opportunities and merges (issue 4)."""

from __future__ import annotations

import click


@click.group("opportunity")
def group() -> None:
    """Opportunities and merges (issue 4)."""
