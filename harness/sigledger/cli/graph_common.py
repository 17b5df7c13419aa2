"""What the `sigledger graph` commands share: Neo4j options, the outbox status, and progress on a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

import click
from psycopg.rows import dict_row

from sigledger.core.db import connect as db_connect
from sigledger.graph.driver import Neo4jSettings, connect
from sigledger.graph.sink import Neo4jSink

F = TypeVar("F", bound=Callable[..., Any])
#: application_name of the graph commands' own connections (pg_stat_activity tells them apart)
APP = "sigledger-graph-cli"


def neo4j_options(func: F) -> F:
    defaults = Neo4jSettings.from_env()
    func = click.option(
        "--neo4j-uri",
        default=defaults.uri,
        show_default=True,
        help="Bolt URI [env SIGLEDGER_NEO4J_URI; default: the local server of `make neo4j-up`].",
    )(func)
    func = click.option(
        "--neo4j-user", default=defaults.user, show_default=True, help="[env SIGLEDGER_NEO4J_USER]"
    )(func)
    func = click.option(
        "--neo4j-password",
        default=defaults.password,
        help="[env SIGLEDGER_NEO4J_PASSWORD; default: the local test server's]",
    )(func)
    func = click.option(
        "--neo4j-database",
        default=defaults.database,
        show_default=True,
        help="[env SIGLEDGER_NEO4J_DATABASE]",
    )(func)
    return func


def settings_of(kw: dict[str, Any]) -> Neo4jSettings:
    return Neo4jSettings(
        uri=kw.pop("neo4j_uri"),
        user=kw.pop("neo4j_user"),
        password=kw.pop("neo4j_password"),
        database=kw.pop("neo4j_database"),
    )


@contextmanager
def open_sink(settings: Neo4jSettings) -> Iterator[Neo4jSink]:
    driver = connect(settings)
    try:
        yield Neo4jSink(driver, settings.database, settings.uri)
    finally:
        driver.close()


def outbox_status(dsn: str) -> dict[str, Any]:
    with db_connect(dsn, row_factory=dict_row, application_name=APP) as conn:
        row = conn.execute("SELECT * FROM sigledger.graph_outbox_status()").fetchone()
    assert row is not None
    return dict(row)


class Progress:
    """One line of progress with a rate, redrawn on stderr when it is a terminal; silent otherwise (the
    command prints its one-line summary either way). ``total`` may grow (rows arrive while draining)."""

    def __init__(
        self, label: str, total: int | None, unit: str = "rows", stream: IO[str] | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def advance(self, n: int) -> None:
        self.done += n
        if self.total is not None and self.done > self.total:
            self.total = self.done
        now = time.monotonic()
        if self.live and now - self._drawn >= 0.2:
            self._drawn = now
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()

    def line(self) -> str:
        text = f"{self.label}: {self.done:,}"
        if self.total:
            text += f" / {self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {self.rate:,.0f} {self.unit}/s"
        if self.total and self.rate > 0 and self.done < self.total:
            text += f", about {(self.total - self.done) / self.rate:,.0f} s left"
        return text

    def close(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def summary(self) -> str:
        """``<done> <unit> in <s> s (<rate> <unit>/s)``: the final line, on a terminal or not."""
        return f"{self.done:,} {self.unit} in {self.elapsed:,.1f} s ({self.rate:,.0f} {self.unit}/s)"
