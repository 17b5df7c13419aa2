"""The `sigledger` command. Each command group lives in its own module of this package.

Exit statuses are shared by every command (sigledger.cli.exit_codes): 0 ok, 1 refused by a rule, 2 usage,
3 a check found something to act on, 4 migrations need repair, 5 the preflight blocks an upgrade, 69 database
unavailable.
"""

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
    exit_codes,
    graph,
    metrics,
    migrate,
    opportunity,
    price,
    reservation,
    role,
    signal,
)
from sigledger.core.errors import SigledgerError, Unavailable, translate

GROUPS = (
    db,
    migrate,
    role,
    agent,
    cost,
    budget,
    reservation,
    price,
    signal,
    entity,
    opportunity,
    graph,
    metrics,
    demo,
)


class _Main(click.Group):
    """Turns sigledger's own errors into a short message and the shared exit status, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            try:
                return super().invoke(ctx)
            except psycopg.Error as raw:
                translated = translate(raw)
                if translated is raw:
                    translated = SigledgerError(str(raw).strip(), sqlstate=raw.sqlstate)
                raise translated from raw
        except Unavailable as exc:
            # one line: scripts and people read host, port and cause at once
            click.secho(f"error: database unavailable: {' '.join(str(exc).split())}", fg="red", err=True)
            sys.exit(exit_codes.UNAVAILABLE)
        except SigledgerError as exc:
            message = str(exc)
            if exc.detail:
                message += f"\n  detail: {exc.detail}"
            if exc.hint:
                message += f"\n  hint: {exc.hint}"
            code = f" [{exc.sqlstate}]" if exc.sqlstate else ""
            click.secho(f"error{code}: {message}", fg="red", err=True)
            sys.exit(exit_codes.REFUSED)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(exit_codes.INTERRUPTED)


@click.group(
    cls=_Main,
    epilog="Exit status: 0 ok, 1 refused by a rule, 2 usage, 3 attention, 4 repair, 5 preflight blocks, "
    "69 database unavailable (docs/operations.md).",
)
@click.version_option(__version__, prog_name="sigledger")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """sigledger: the PostgreSQL core of an AI-agent pipeline."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        # the pool's reconnection warnings repeat what the one error line says
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


for _module in GROUPS:
    main.add_command(_module.group)
main.add_command(role.group, "roles")  # `sigledger roles sql` reads better; both names work
