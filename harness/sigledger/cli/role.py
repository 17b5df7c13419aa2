"""`sigledger role` (also `sigledger roles`): the cluster-wide roles and the logins applications connect as."""

from __future__ import annotations

import click

from sigledger.cli.options import dsn_option, resolve_dsn
from sigledger.core.db import connect
from sigledger.migrate import roles


@click.group("role")
def group() -> None:
    """Roles: the SQL a DBA runs once, and member logins with their server-side timeouts."""


def _logins(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, kind = value.partition("=")
        if not sep or kind not in roles.GROUPS or not name:
            raise click.BadParameter(
                f"'{value}': expected NAME=app|readonly|admin|graph", param_hint="--login"
            )
        out[name] = kind
    return out


@group.command("sql")
@click.option(
    "--deployer", default=None, help="The login that runs the migrations: made a member of sigledger_owner."
)
@click.option(
    "--database", default=None, help="With --deployer: grant it CREATE on this database (first deploy)."
)
@click.option(
    "--login",
    "logins",
    multiple=True,
    help="Also a member login, NAME=app|readonly|admin|graph (repeatable).",
)
def sql_(deployer: str | None, database: str | None, logins: tuple[str, ...]) -> None:
    """Print the idempotent SQL that creates or corrects every role (run it as a superuser or with CREATEROLE).
    After it, a deployer needs no CREATEROLE."""
    click.echo(roles.roles_sql(deployer, database, _logins(logins)), nl=False)


@group.command("create-login")
@dsn_option
@click.argument("name")
@click.option(
    "--as", "kind", required=True, type=click.Choice(sorted(roles.GROUPS)), help="The group the login joins."
)
@click.option(
    "--password", default=None, help="Set this password (else none: set it yourself, or use certificates)."
)
@click.option("--print-sql", is_flag=True, help="Print the SQL instead of running it (for a DBA).")
def create_login(dsn: str | None, name: str, kind: str, password: str | None, print_sql: bool) -> None:
    """Create (or correct) login NAME as a member of sigledger_<group>, with the server-side timeouts on the
    login itself (statement_timeout, lock_timeout, idle_in_transaction_session_timeout; read-only for
    readonly). Needs CREATEROLE."""
    if print_sql:
        click.echo("\n".join(roles.login_sql(name, kind, password)))
        return
    with connect(resolve_dsn(dsn), application_name="sigledger-role", autocommit=True) as conn:
        roles.create_login(conn, name, kind, password)
    settings = ", ".join(f"{k}={v}" for k, v in roles.LOGIN_SETTINGS[kind].items())
    click.echo(f"login {name}: member of {roles.GROUPS[kind]} ({settings})")
