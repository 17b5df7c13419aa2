"""`sigledger agent`: Agents and their budgets (issue 3)."""

from __future__ import annotations

import click


@click.group("agent")
def group() -> None:
    """Agents and their budgets (issue 3)."""
