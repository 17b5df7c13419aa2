"""`sigledger cost`: The LLM cost ledger (issue 3)."""

from __future__ import annotations

import click


@click.group("cost")
def group() -> None:
    """The LLM cost ledger (issue 3)."""
