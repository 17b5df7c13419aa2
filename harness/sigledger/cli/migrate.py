"""`sigledger migrate`: plan, apply, inspect, verify and roll back the schema."""

from __future__ import annotations

import json
import sys

import click

from sigledger.cli import exit_codes
from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.migrate import Migrator, Settings, Status, status_json


def print_status(status: Status) -> None:
    click.echo(
        f"current version: {('V' + status.current) if status.current else 'none'}"
        f"   head: {('V' + status.head) if status.head else 'none'}"
    )
    for title, items, color in (
        ("applied", status.applied, None),
        ("pending", status.pending, "yellow"),
        ("repeatable pending", status.repeatables_pending, "yellow"),
        ("partially applied", status.in_progress, "red"),
        ("DRIFTED (applied file changed)", status.drifted, "red"),
        ("UNKNOWN to this code (database is ahead)", status.unknown, "red"),
        ("OUT OF ORDER (below the newest applied)", status.out_of_order, "red"),
    ):
        for item in items:
            click.secho(f"  {title:<10} {item}", fg=color)
    verdict = {0: "up to date", 3: "pending migrations", 4: "drift: action needed"}[status.exit_code]
    click.echo(f"status: {verdict}")


def _migrator(dsn: str | None, ctx: click.Context) -> Migrator:
    settings = Settings(**{k: v for k, v in (ctx.obj or {}).items() if v is not None})
    # an unreachable database: the runner's connect() raises Unavailable (one line and exit 69)
    return Migrator(resolve_dsn(dsn), settings=settings, log=click.echo)


@click.group("migrate")
@click.option("--lock-timeout", default=None, help="lock_timeout for DDL (default 5s), retried with backoff.")
@click.option("--statement-timeout", default=None, help="statement_timeout for DDL (default 30min).")
@click.option(
    "--concurrent-lock-timeout",
    default=None,
    help="lock_timeout for CONCURRENTLY builds, which wait out old transactions (default 10min).",
)
@click.option(
    "--retries", type=click.IntRange(0, 100), default=None, help="Lock-timeout retries (default 5)."
)
@click.option(
    "--runner-wait",
    type=click.FloatRange(0),
    default=None,
    help="Seconds to wait for another runner (default 600).",
)
@click.option(
    "--allow-out-of-order",
    is_flag=True,
    default=None,
    help="Apply pending files numbered below the newest applied version (refused by default).",
)
@click.pass_context
def group(
    ctx: click.Context,
    lock_timeout: str | None,
    statement_timeout: str | None,
    concurrent_lock_timeout: str | None,
    retries: int | None,
    runner_wait: float | None,
    allow_out_of_order: bool | None,
) -> None:
    """Versioned migrations and repeatable function files."""
    ctx.obj = {
        "lock_timeout": lock_timeout,
        "statement_timeout": statement_timeout,
        "concurrent_lock_timeout": concurrent_lock_timeout,
        "retries": retries,
        "runner_wait": runner_wait,
        "allow_out_of_order": allow_out_of_order or None,
    }


@group.command("up")
@dsn_option
@click.option("--to", "to", default=None, help="Stop after this version (e.g. V3_010).")
@click.pass_context
def up(ctx: click.Context, dsn: str | None, to: str | None) -> None:
    """Apply pending migrations (then changed repeatable files)."""
    ran = _migrator(dsn, ctx).up(to=to)
    click.echo(f"applied {len(ran)} step(s)" if ran else "nothing to do")


@group.command("status")
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, dsn: str | None, as_json: bool) -> None:
    """Show applied, pending and drifted migrations. Exit 0 up to date, 3 pending, 4 drift/unknown/partial/out of order."""
    result = _migrator(dsn, ctx).status()
    if as_json:
        # versions as the text output and the file names spell them (V7_001, not 7_001)
        body = json.loads(status_json(result))
        body["current"] = f"V{body['current']}" if body.get("current") else None
        if body.get("head"):
            body["head"] = f"V{body['head']}"
        click.echo(json.dumps(body, indent=2))
    else:
        print_status(result)
    sys.exit(result.exit_code)


@group.command("plan")
@dsn_option
@click.option("--to", "to", default=None)
@click.pass_context
def plan(ctx: click.Context, dsn: str | None, to: str | None) -> None:
    """Print what `up` would run, in order. Changes nothing."""
    steps = _migrator(dsn, ctx).plan(to=to)
    for step in steps:
        click.echo(step)
    if not steps:
        click.echo("nothing to do")


@group.command("verify")
@dsn_option
@click.pass_context
def verify(ctx: click.Context, dsn: str | None) -> None:
    """Run the verify scripts and check index validity. Exit 4 (repair) on any problem."""
    problems = _migrator(dsn, ctx).verify()
    for problem in problems:
        click.secho(f"  {problem}", fg="red")
    click.echo("verified" if not problems else f"{len(problems)} problem(s)")
    sys.exit(exit_codes.REPAIR if problems else exit_codes.OK)


@group.command("down")
@dsn_option
@click.option("--to", "to", required=True, help="Roll back every migration above this version (0 for all).")
@click.pass_context
def down(ctx: click.Context, dsn: str | None, to: str) -> None:
    """Roll back migrations above --to, newest first, with their .down.sql files."""
    ran = _migrator(dsn, ctx).down(to=to)
    click.echo(f"rolled back {len(ran)} migration(s)" if ran else "nothing to roll back")


@group.command("baseline")
@dsn_option
@click.argument("version")
@click.pass_context
def baseline(ctx: click.Context, dsn: str | None, version: str) -> None:
    """Mark an existing database as being at VERSION without running anything."""
    marked = _migrator(dsn, ctx).baseline(version)
    click.echo(f"marked {len(marked)} migration(s) as applied")
