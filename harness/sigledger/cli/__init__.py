"""The `sigledger` command. Each command group lives in its own module of this package."""

from __future__ import annotations

import logging
import sys

import click
import psycopg

from sigledger import __version__
from sigledger.cli import (
    agent,
    budget,
    cost,
    db,
    demo,
    entity,
    graph,
    metrics,
    migrate,
    opportunity,
    role,
    signal,
)
from sigledger.core.errors import SigledgerError, translate

GROUPS = (db, migrate, role, agent, cost, budget, signal, entity, opportunity, graph, metrics, demo)


class _Main(click.Group):
    """Turns sigledger's own errors into a one-line message and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            try:
                return super().invoke(ctx)
            except psycopg.Error as raw:
                translated = translate(raw)
                if translated is raw:
                    translated = SigledgerError(str(raw).strip(), sqlstate=raw.sqlstate)
                raise translated from raw
        except SigledgerError as exc:
            message = str(exc)
            if exc.detail:
                message += f"\n  detail: {exc.detail}"
            if exc.hint:
                message += f"\n  hint: {exc.hint}"
            code = f" [{exc.sqlstate}]" if exc.sqlstate else ""
            click.secho(f"error{code}: {message}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=_Main)
@click.version_option(__version__, prog_name="sigledger")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """sigledger: the PostgreSQL core of an AI-agent pipeline."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _module in GROUPS:
    main.add_command(_module.group)
main.add_command(role.group, "roles")  # `sigledger roles sql` reads better; both names work
