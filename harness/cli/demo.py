"""`sigledger demo`: the main job on an embedded default (a throwaway local cluster)."""

from __future__ import annotations

import click

from harness.cli.migrate import print_status
from harness.localdb import LocalCluster
from harness.migrate import Migrator


@click.command("demo")
@click.option("--dsn", default=None, help="Run against an existing database instead of the local cluster.")
def group(dsn: str | None) -> None:
    """Start a local cluster (unless --dsn), apply every migration, and show the schema status."""
    if dsn is None:
        cluster = LocalCluster.default()
        cluster.start()
        dsn = cluster.dsn()
        click.echo(f"local cluster: {dsn}")
    migrator = Migrator(dsn, log=click.echo)
    migrator.up()
    print_status(migrator.status())
