"""`sigledger budget`: Reservations, settlement, reconciliation (issue 3)."""

from __future__ import annotations

import click


@click.group("budget")
def group() -> None:
    """Reservations, settlement, reconciliation (issue 3)."""
