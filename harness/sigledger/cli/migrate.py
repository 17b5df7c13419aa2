"""`sigledger migrate`: plan, apply, inspect, verify and roll back the schema."""

from __future__ import annotations

import json
import sys

import click

from sigledger.cli import exit_codes
from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.migrate import Migrator, Settings, Status, status_json
from sigledger.migrate.preflight import Preflight


def print_status(status: Status) -> None:
    click.echo(
        f"current version: {('V' + status.current) if status.current else 'none'}"
        f"   head: {('V' + status.head) if status.head else 'none'}"
    )
    if status.runner is not None:
        r = status.runner
        click.secho(
            f"  a runner is working now: pid {r['pid']}, application '{r['application_name']}', "
            f"client {r['client']}, since {r['since']}",
            fg="yellow",
        )
    for title, items, color in (
        ("applied", status.applied, None),
        ("applied from an earlier release of the file", status.superseded, None),
        ("pending", status.pending, "yellow"),
        ("repeatable pending", status.repeatables_pending, "yellow"),
        (
            "being applied" if status.runner else "partially applied",
            status.in_progress,
            "yellow" if status.runner else "red",
        ),
        ("DRIFTED (applied file changed)", status.drifted, "red"),
        ("UNKNOWN to this code (database is ahead)", status.unknown, "red"),
        ("OUT OF ORDER (below the newest applied)", status.out_of_order, "red"),
    ):
        for item in items:
            click.secho(f"  {title:<10} {item}", fg=color)
    verdict = {0: "up to date", 3: "pending migrations", 4: "drift: action needed"}[status.exit_code]
    if status.runner is not None and status.exit_code == 3:
        verdict = "pending migrations (a runner is applying them now)"
    click.echo(f"status: {verdict}")


def print_preflight(report: Preflight, *, quiet_ok: bool = False) -> None:
    colors = {"ok": None, "will do": "yellow", "data": "yellow", "BLOCKED": "red"}
    for check in report.checks:
        if quiet_ok and check.status == "ok":
            continue
        click.secho(f"  [{check.status}] {check.name}: {check.message}", fg=colors.get(check.status))
        for example in check.examples:
            click.echo(f"      e.g. {example}")
        if check.fix:
            for line in check.fix.splitlines():
                click.echo(f"      fix: {line}")
    click.echo(
        f"preflight: {len(report.blocked)} problem(s) block the upgrade"
        if report.blocked
        else "preflight: nothing blocks the upgrade"
    )


def _migrator(dsn: str | None, ctx: click.Context) -> Migrator:
    settings = Settings(**{k: v for k, v in (ctx.obj or {}).items() if v is not None})
    # an unreachable database: the runner's connect() raises Unavailable (one line and exit 69)
    return Migrator(resolve_dsn(dsn), settings=settings, log=click.echo)


@click.group("migrate")
@click.option(
    "--lock-timeout",
    default=None,
    help="lock_timeout for DDL (default 1s), retried with backoff (--retries).",
)
@click.option("--statement-timeout", default=None, help="statement_timeout for DDL (default 30min).")
@click.option(
    "--concurrent-lock-timeout",
    default=None,
    help="lock_timeout for CONCURRENTLY builds, which wait out old transactions (default 10min).",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=None,
    help="Retries after a lock timeout or a deadlock (default 10).",
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
@click.option(
    "--retire-group-logins",
    is_flag=True,
    default=None,
    help="Make the sigledger groups NOLOGIN even while applications may still log in as them.",
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
    retire_group_logins: bool | None,
) -> None:
    """Versioned migrations and repeatable function files."""
    ctx.obj = {
        "lock_timeout": lock_timeout,
        "statement_timeout": statement_timeout,
        "concurrent_lock_timeout": concurrent_lock_timeout,
        "retries": retries,
        "runner_wait": runner_wait,
        "allow_out_of_order": allow_out_of_order or None,
        "retire_group_logins": retire_group_logins or None,
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
@click.option("--json", "as_json", is_flag=True, help="Steps and preflight as JSON.")
@click.option("--sql", "as_sql", is_flag=True, help="The exact SQL `up` would run, in order.")
@click.pass_context
def plan(ctx: click.Context, dsn: str | None, to: str | None, as_json: bool, as_sql: bool) -> None:
    """Print what `up` would do, in order, and what the preflight found. Changes nothing. Exit 5 when the
    preflight finds something that blocks the upgrade."""
    the_plan = _migrator(dsn, ctx).plan(to=to)
    if as_json:
        click.echo(the_plan.as_json())
    elif as_sql:
        click.echo(the_plan.as_sql())
    else:
        for line in the_plan.lines():
            click.echo(line)
        if not the_plan.steps:
            click.echo("nothing to do")
        if any(c.status != "ok" for c in the_plan.preflight.checks):
            print_preflight(the_plan.preflight, quiet_ok=True)
    sys.exit(the_plan.preflight.exit_code)


@group.command("preflight")
@dsn_option
@click.option("--to", "to", default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def preflight(ctx: click.Context, dsn: str | None, to: str | None, as_json: bool) -> None:
    """Check everything `up` needs before anything runs: roles, privileges, ownership, and the data pending
    migrations would refuse (with counts, examples and the repair rule). Exit 0 when nothing blocks, 5 when
    something does."""
    report = _migrator(dsn, ctx).preflight(to=to)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        print_preflight(report)
    sys.exit(report.exit_code)


@group.command("history")
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def history(ctx: click.Context, dsn: str | None, as_json: bool) -> None:
    """What ran: version, kind, by whom, when, how long, checksum, and the data repairs."""
    migrator = _migrator(dsn, ctx)
    rows = migrator.history()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        took = f"{r['duration_ms']} ms" if r["duration_ms"] is not None else "-"
        click.echo(
            f"{r['version']:<11} {r['name']:<28} {r['kind']:<10} {r['status']:<10} {r['applied_by']:<16} "
            f"{r['applied_at'][:19]}  {took:>10}  {r['checksum'][:12]}  {r['file']}"
        )
        if r["last_error"]:
            click.secho(f"            last error: {r['last_error']}", fg="red")
    if not rows:
        click.echo("no history (nothing applied)")


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
@click.option(
    "--force",
    is_flag=True,
    help="Roll back even if tables or columns that hold rows are dropped (or --to 0).",
)
@click.pass_context
def down(ctx: click.Context, dsn: str | None, to: str, force: bool) -> None:
    """Roll back migrations above --to, newest first, with their .down.sql files. Without --force, refused
    (exit 1, nothing changed) when it would drop rows; the refusal lists each table and column with its row
    count."""
    ran = _migrator(dsn, ctx).down(to=to, force=force)
    click.echo(f"rolled back {len(ran)} migration(s)" if ran else "nothing to roll back")


@group.command("baseline")
@dsn_option
@click.argument("version")
@click.pass_context
def baseline(ctx: click.Context, dsn: str | None, version: str) -> None:
    """Mark an existing database as being at VERSION without running anything."""
    marked = _migrator(dsn, ctx).baseline(version)
    click.echo(f"marked {len(marked)} migration(s) as applied")
