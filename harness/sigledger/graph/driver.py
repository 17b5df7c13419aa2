"""The Neo4j driver, configured for the sync worker: bounded retries, connectivity checked at start.

The driver only retries briefly (``max_transaction_retry_time``): the long backoff belongs to the outbox, where
it survives restarts and does not hold a batch hostage. Failures are translated into ``GraphError`` (SLG01)
with a message an operator can act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import neo4j
from neo4j import exceptions as nx

from sigledger.core.errors import GraphError

from . import neo4j_server


class GraphUnavailable(GraphError):
    """SLG01: Neo4j cannot be reached right now (down, restarting, network). Not the rows' fault."""


class WriteConflict(GraphUnavailable):
    """SLG01: a concurrent transaction deleted a node this write needed, again and again (the sink retries a
    few times first). Transient, like an outage: the batch is rolled back and tried again later."""


class GraphAuthError(GraphError):
    """SLG01: Neo4j refused the credentials."""


@dataclass(frozen=True)
class Neo4jSettings:
    uri: str
    user: str
    password: str | None
    database: str = "neo4j"
    max_retry_time: float = 5.0
    connection_timeout: float = 5.0

    @classmethod
    def from_env(cls) -> Neo4jSettings:
        """SIGLEDGER_NEO4J_URI / _USER / _PASSWORD / _DATABASE; defaults: the server of ``make neo4j-up``
        (its port from the state folder)."""
        password = os.environ.get("SIGLEDGER_NEO4J_PASSWORD", neo4j_server.DEFAULT_PASSWORD)
        return cls(
            uri=os.environ.get("SIGLEDGER_NEO4J_URI") or neo4j_server.local_uri(),
            user=os.environ.get("SIGLEDGER_NEO4J_USER", neo4j_server.DEFAULT_USER),
            password=password or None,
            database=os.environ.get("SIGLEDGER_NEO4J_DATABASE", "neo4j"),
        )


def is_outage(exc: BaseException) -> bool:
    """True when the failure is about reaching Neo4j, not about the data written (so no row is to blame)."""
    if isinstance(exc, GraphUnavailable):
        return True
    outage_types = (
        nx.ServiceUnavailable,
        nx.SessionExpired,
        nx.ConnectionAcquisitionTimeoutError,
        nx.IncompleteCommit,
        nx.TransientError,
        OSError,
    )
    if isinstance(exc, outage_types):
        return True
    return isinstance(exc, nx.Neo4jError) and exc.is_retryable()


def describe(exc: BaseException, settings: Neo4jSettings) -> GraphError:
    """A GraphError that says what went wrong and where."""
    if isinstance(exc, GraphError):
        return exc
    if isinstance(exc, nx.AuthError):
        return GraphAuthError(
            f"Neo4j at {settings.uri} rejected the credentials of user {settings.user!r}",
            sqlstate="SLG01",
            hint="check SIGLEDGER_NEO4J_USER / SIGLEDGER_NEO4J_PASSWORD",
        )
    if is_outage(exc):
        return GraphUnavailable(
            f"Neo4j at {settings.uri} is unreachable: {exc}",
            sqlstate="SLG01",
            hint="is the server running? (`make neo4j-up` starts the local one)",
        )
    if isinstance(exc, nx.DriverError) and "closed" in str(exc).lower():
        return GraphUnavailable(f"Neo4j connection to {settings.uri} was lost: {exc}", sqlstate="SLG01")
    return GraphError(f"Neo4j at {settings.uri} failed: {exc}", sqlstate="SLG01")


def connect(settings: Neo4jSettings, *, verify: bool = True) -> neo4j.Driver:
    """A driver; with ``verify`` the server is contacted (and the credentials checked) before returning."""
    auth = (settings.user, settings.password) if settings.password is not None else None
    driver = neo4j.GraphDatabase.driver(
        settings.uri,
        auth=auth,
        max_transaction_retry_time=settings.max_retry_time,
        connection_timeout=settings.connection_timeout,
        connection_acquisition_timeout=settings.connection_timeout * 2,
        max_connection_pool_size=8,
        # Server notifications (e.g. "property key does not exist" for the meta node's rarely set keys) are
        # advice for people writing queries by hand, not for the worker's log.
        notifications_min_severity="OFF",
    )
    if verify:
        try:
            driver.verify_connectivity()
            driver.verify_authentication()
        except Exception as exc:
            driver.close()
            raise describe(exc, settings) from exc
    return driver
