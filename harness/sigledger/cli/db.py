"""`sigledger db`: the throwaway local cluster (demo and development)."""

from __future__ import annotations

import click

from sigledger.core.localdb import LocalCluster
from sigledger.migrate import Migrator


@click.group("db")
def group() -> None:
    """A throwaway local PostgreSQL cluster inside the checkout (.sigledger/pg)."""


@group.command("up")
@click.option("--migrate/--no-migrate", default=True, help="Apply every migration after start.")
def up(migrate: bool) -> None:
    """Start the local cluster (creating it if needed) and apply the migrations."""
    cluster = LocalCluster.default()
    cluster.start()
    click.echo(f"local cluster running: {cluster.dsn()}")
    if migrate:
        migrator = Migrator(cluster.dsn(), log=click.echo)
        migrator.up()
        from sigledger.cli.migrate import print_status

        print_status(migrator.status())


@group.command("down")
@click.option("--destroy", is_flag=True, help="Also delete the data directory.")
def down(destroy: bool) -> None:
    """Stop the local cluster."""
    cluster = LocalCluster.default()
    if destroy:
        cluster.destroy()
        click.echo("local cluster stopped and removed")
    else:
        cluster.stop()
        click.echo("local cluster stopped")


@group.command("dsn")
def dsn() -> None:
    """Print the local cluster's connection string."""
    cluster = LocalCluster.default()
    if not cluster.is_running():
        raise click.ClickException("the local cluster is not running (sigledger db up)")
    click.echo(cluster.dsn())
