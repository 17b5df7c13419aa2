"""`sigledger entity`: Entity resolution (issue 4)."""

from __future__ import annotations

import click


@click.group("entity")
def group() -> None:
    """Entity resolution (issue 4)."""
