"""`sigledger signal`: Signal ingestion."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sigledger.cli import exit_codes
from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.core.db import Database
from sigledger.ingest.client import MAX_BATCH, ingest_lines


@click.group("signal")
def group() -> None:
    """Signal ingestion.

    Load signals from a JSONL file (idempotent per source and external id) and link the entities they mention.
    """


@group.command("ingest")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH),
    default=500,
    show_default=True,
    help="Lines per ingest_signals call (one transaction each).",
)
@click.option(
    "--policy",
    type=click.Choice(["create", "review"]),
    default=None,
    help="What to do with unknown entity names (default: the database's ingest_settings).",
)
@click.option(
    "--max-rejected", type=click.IntRange(0), default=50, show_default=True, help="Rejected lines listed."
)
@dsn_option
def ingest(file: Path, batch_size: int, policy: str | None, max_rejected: int, dsn: str | None) -> None:
    """Ingest FILE.jsonl: one JSON object per line,
    {"source", "external_id", "occurred_at", "payload"?, "content"?, "mentions"?: [name, ...]}.

    A bad line never stops the rest; it is reported with its line number. Exit status: 0 when every line was
    ingested (created or duplicate), 1 when some lines were rejected (or on an error)."""
    with file.open("rb") as handle:
        total = sum(1 for line in handle if line.strip())
    with (
        Database(resolve_dsn(dsn), application_name="sigledger-signal-ingest", max_size=1) as db,
        file.open(encoding="utf-8", errors="replace") as lines,
        click.progressbar(length=total, label=f"ingesting {file.name}", file=sys.stderr) as bar,
    ):
        summary = ingest_lines(db, lines, batch_size=batch_size, policy=policy, progress=bar.update)
    click.echo(
        f"lines: {summary.lines}  created: {summary.created}  duplicates: {summary.duplicates}  "
        f"rejected: {len(summary.rejected)}  entity links: {summary.linked}  queued for review: {summary.queued}"
    )
    for rejected in summary.rejected[:max_rejected]:
        click.echo(f"  line {rejected.line}: {rejected.reason}")
    if len(summary.rejected) > max_rejected:
        click.echo(f"  ... and {len(summary.rejected) - max_rejected} more rejected lines")
    if summary.rejected:
        sys.exit(exit_codes.REFUSED)  # 2 is usage, for every command
