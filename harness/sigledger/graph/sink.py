"""Writing snapshots into Neo4j (and reading them back for verify and rebuild).

One batch = one managed write transaction of a few UNWIND statements (the Cypher and the reasons behind it are
in ``cypher.py``): first a read of the meta node (its database, epoch and fence are checked: a mismatch ends
the transaction before anything is written), then merged losers (their relationships move to the winner),
plain deletes, and upserts of entities, signals, opportunities (so a winner's refresh runs after its loser's
relationships moved and trims them to what Postgres says).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import neo4j
from neo4j import exceptions as nx

from sigledger.core.errors import GraphError

from . import cypher
from .cypher import CONSTRAINTS, INCOMING, LABELS, LINKS, META, REL_TYPES, TOMBSTONE
from .driver import WriteConflict

__all__ = ["CONSTRAINTS", "INCOMING", "LABELS", "LINKS", "GraphMeta", "Neo4jSink", "Snapshot", "Stamp"]

# A write that lost a race against a concurrent delete is retried this many times in a fresh transaction.
CONFLICT_RETRIES = 5


class GraphIdentityError(GraphError):
    """SLG01: the graph holds another database's or another epoch's projection (or was wiped): nothing is
    written until `sigledger graph rebuild` makes it this database's again."""


@dataclass(frozen=True)
class Snapshot:
    """One aggregate as Postgres shows it now (a row of sigledger._graph_snapshot)."""

    aggregate_type: str
    aggregate_id: str
    state: str  # present | absent | deferred | error
    version: int
    props: dict[str, Any] | None = None
    links: tuple[str, ...] = ()
    winner_id: str | None = None
    error: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.aggregate_type, self.aggregate_id)


@dataclass(frozen=True)
class Stamp:
    """Who writes (sigledger._graph_identity): this database, its epoch, and whether a graph already holds the
    epoch's projection (then the meta node must exist)."""

    database_id: str
    epoch: int
    written: bool


@dataclass(frozen=True)
class GraphMeta:
    """The graph's meta node: which database and epoch it holds, its highest version, its fence."""

    database_id: str | None
    epoch: int | None
    high_water: int
    fence: int
    diverged: str | None = None


def check_identity(stamp: Stamp, meta: GraphMeta | None, uri: str) -> None:
    """Raises GraphIdentityError when the graph is not this database's projection of this epoch."""
    rebuild = "run `sigledger graph rebuild` to make it this database's projection again"
    if meta is None:
        if stamp.written:
            raise GraphIdentityError(
                f"the graph at {uri} has no sigledger meta node, but this database (id {stamp.database_id}, "
                f"epoch {stamp.epoch}) has already projected into a graph: it was wiped or replaced",
                sqlstate="SLG01",
                hint=rebuild,
            )
        return
    if meta.diverged:
        raise GraphIdentityError(
            f"the graph at {uri} was found ahead of this database: {meta.diverged}",
            sqlstate="SLG01",
            hint=rebuild,
        )
    if meta.database_id != stamp.database_id:
        raise GraphIdentityError(
            f"the graph at {uri} holds the projection of another database (id {meta.database_id}); "
            f"this database is {stamp.database_id}",
            sqlstate="SLG01",
            hint=f"point --neo4j-uri/--neo4j-database at this database's graph, or {rebuild}",
        )
    if meta.epoch != stamp.epoch:
        raise GraphIdentityError(
            f"the graph at {uri} holds epoch {meta.epoch} of this database, which is at epoch {stamp.epoch}: "
            "one of the two was restored from a backup or rebuilt against another copy",
            sqlstate="SLG01",
            hint=rebuild,
        )


@dataclass
class WritePlan:
    """The statements of one batch, grouped by kind."""

    merges: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    deletes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    upserts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    version: int = 0

    @classmethod
    def of(cls, snapshots: Iterable[Snapshot]) -> WritePlan:
        """One row per aggregate: a winner both claimed and pulled in by its loser's merge is written once
        (one statement never holds one id twice)."""
        plan = cls()
        seen: set[tuple[str, str]] = set()
        for s in snapshots:
            if s.key in seen:
                continue
            seen.add(s.key)
            plan.version = max(plan.version, s.version)
            if s.state == "present":
                plan.upserts.setdefault(s.aggregate_type, []).append(
                    {
                        "id": s.aggregate_id,
                        "version": s.version,
                        "props": s.props or {},
                        # Distinct (the upsert CREATEs each missing link; Postgres's keys make them so);
                        # turned into positions in the statement's targets by statements().
                        "links": list(dict.fromkeys(s.links)),
                    }
                )
            elif s.state == "absent" and s.winner_id is not None:
                plan.merges.setdefault(s.aggregate_type, []).append(
                    {"id": s.aggregate_id, "version": s.version, "winner": s.winner_id}
                )
            elif s.state == "absent":
                plan.deletes.setdefault(s.aggregate_type, []).append(
                    {"id": s.aggregate_id, "version": s.version}
                )
        return plan

    def statements(self) -> list[tuple[str, dict[str, Any]]]:
        # Rows in id order: concurrent workers then lock shared nodes in the same order (fewer deadlocks).
        for group in (self.merges, self.deletes, self.upserts):
            for rows in group.values():
                rows.sort(key=lambda r: r["id"])
        out: list[tuple[str, dict[str, Any]]] = []
        for kind, rows in self.merges.items():
            out.append((cypher.merge_query(kind), {"rows": rows}))
        for kind, rows in self.deletes.items():
            out.append((cypher.delete_query(kind), {"rows": rows}))
        for kind in ("entity", "signal", "opportunity"):
            if kind in self.upserts:
                out.append((cypher.upsert_query(kind), _upsert_params(self.upserts[kind])))
        return out


def _upsert_params(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """An upsert's parameters: each distinct link target once, in id order (``$targets``: looked up once per
    statement, and in the same order by every writer), and each row's links as positions in it (``at``)."""
    targets = sorted({t for r in rows for t in r["links"]})
    position = {t: i for i, t in enumerate(targets)}
    return {
        "rows": [
            {
                "id": r["id"],
                "version": r["version"],
                "props": r["props"],
                "at": [position[t] for t in r["links"]],
            }
            for r in rows
        ],
        "targets": targets,
    }


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, WriteConflict) or (
        isinstance(exc, nx.Neo4jError) and exc.code == "Neo.ClientError.Statement.EntityNotFound"
    )


class Neo4jSink:
    """Neo4j side of the projection. ``write_timeout``: the server ends a write transaction after this many
    seconds (tombstone collection relies on it, see cypher.COLLECT)."""

    def __init__(
        self, driver: neo4j.Driver, database: str = "neo4j", uri: str = "", write_timeout: float = 120.0
    ) -> None:
        self.driver = driver
        self.database = database
        self.uri = uri or "Neo4j"
        self.write_timeout = write_timeout

    def ensure_constraints(self) -> None:
        for stmt in CONSTRAINTS:
            self.driver.execute_query(stmt, database_=self.database)

    def write(self, snapshots: Sequence[Snapshot], stamp: Stamp | None = None) -> None:
        """All snapshots in one managed write transaction, which first reads the meta node and stops (rolled
        back, GraphIdentityError) unless the graph holds ``stamp``'s database and epoch and its fence is not
        above the snapshots. Without ``stamp`` (tests), no check."""
        plan = WritePlan.of(snapshots)
        statements = plan.statements()
        if not statements:
            return

        @neo4j.unit_of_work(timeout=self.write_timeout)
        def work(tx: neo4j.ManagedTransaction) -> None:
            if stamp is not None:
                meta = _meta(tx.run(cypher.READ_META).single())
                check_identity(stamp, meta, self.uri)
                if meta is not None and plan.version < meta.fence:
                    raise GraphIdentityError(
                        f"this batch's snapshots (version {plan.version}) are older than the graph's fence "
                        f"({meta.fence}): read before a rebuild or a tombstone collection, they are discarded "
                        "(their rows stay in the outbox)",
                        sqlstate="SLG01",
                    )
            for query, params in statements:
                record = tx.run(query, params).single()
                if record is not None and record.get("lost"):
                    raise WriteConflict(
                        f"{len(record['lost'])} node(s) deleted by a concurrent transaction", sqlstate="SLG01"
                    )

        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                with self.driver.session(database=self.database) as session:
                    session.execute_write(work)
                return
            except Exception as exc:
                if not _is_conflict(exc) or attempt == CONFLICT_RETRIES:
                    if _is_conflict(exc) and not isinstance(exc, WriteConflict):
                        raise WriteConflict(f"concurrent delete: {exc}", sqlstate="SLG01") from exc
                    raise

    # ---- meta, epochs, tombstones -------------------------------------------------------------------------

    def _meta_query(self, query: str, **params: Any) -> GraphMeta | None:
        records, _, _ = self.driver.execute_query(query, params, database_=self.database)
        return _meta(records[0]) if records else None

    def read_meta(self) -> GraphMeta | None:
        return self._meta_query(cypher.READ_META)

    def create_meta(self, stamp: Stamp) -> GraphMeta | None:
        """The graph becomes ``stamp``'s (if it has no meta node yet); returns the meta node as it is."""
        return self._meta_query(cypher.CREATE_META, database_id=stamp.database_id, epoch=stamp.epoch)

    def record_high_water(self, version: int) -> GraphMeta | None:
        return self._meta_query(cypher.RECORD_HIGH_WATER, version=version)

    def mark_diverged(self, reason: str) -> None:
        self.driver.execute_query(cypher.MARK_DIVERGED, reason=reason, database_=self.database)

    def max_version(self) -> int:
        """The highest sync_version of any node (any label) or of the meta node."""
        records, _, _ = self.driver.execute_query(
            f"CALL () {{ MATCH (n) WHERE n.sync_version IS NOT NULL RETURN max(n.sync_version) AS v "
            f"UNION ALL MATCH (m:{META}) RETURN max(m.high_water) AS v }} RETURN max(v) AS v",
            database_=self.database,
            routing_=neo4j.RoutingControl.READ,
        )
        return int(records[0]["v"] or 0) if records else 0

    def adopt(self, database_id: str, epoch: int, floor: int) -> None:
        """The graph holds this database's projection of ``epoch``; writes below ``floor`` are refused."""
        self.driver.execute_query(
            cypher.ADOPT_META, database_id=database_id, epoch=epoch, floor=floor, database_=self.database
        )

    def collect_tombstones(self, fence: int, grace: float | None = None) -> int | None:
        """One round of tombstone collection (cypher.COLLECT): drops the tombstones at or below the current
        fence once it has stood longer than ``grace`` seconds (default: twice the write timeout), then raises
        it to ``fence``. Returns the fence whose tombstones went, or None."""
        grace = 2 * self.write_timeout if grace is None else grace
        records, _, _ = self.driver.execute_query(
            cypher.COLLECT, fence=fence, grace_ms=int(1000 * grace), database_=self.database
        )
        droppable = records[0]["droppable"] if records else None
        if droppable is None:
            return None
        # CALL ... IN TRANSACTIONS needs an auto-commit transaction (session.run), not a managed one.
        with self.driver.session(database=self.database) as session:
            session.run(cypher.DROP_TOMBSTONES, fence=int(droppable)).consume()
        return int(droppable)

    def tombstones(self) -> int:
        records, _, _ = self.driver.execute_query(
            f"MATCH (t:{TOMBSTONE}) RETURN count(t) AS c", database_=self.database
        )
        return int(records[0]["c"])

    # ---- reads (verify, rebuild, tests) ---------------------------------------------------------------------

    def fetch(self, kind: str, ids: Sequence[str]) -> dict[str, tuple[dict[str, Any], list[str]]]:
        """id -> (properties, sorted outgoing relationships of the projection's types) for the nodes of
        ``kind`` among ``ids``. A relationship is its target id when it is the one the aggregate owns (type and
        target label), else "<TYPE>-><labels>:<id>" (foreign: verify reports it)."""
        label = LABELS[kind]
        link = LINKS[kind]
        owned = "false" if link is None else f"type(r) = '{link[0]}' AND t:{link[1]}"
        q = (
            f"MATCH (n:{label}) WHERE n.id IN $ids "
            f"RETURN n.id AS id, properties(n) AS props, "
            f"COLLECT {{ MATCH (n)-[r:{REL_TYPES}]->(t) "
            f"RETURN CASE WHEN {owned} THEN t.id "
            f"ELSE type(r) + '->' + reduce(s = '', x IN labels(t) | s + x) + ':' + coalesce(t.id, '?') END AS l "
            f"ORDER BY l }} AS links"
        )
        records, _, _ = self.driver.execute_query(
            q, ids=list(ids), database_=self.database, routing_=neo4j.RoutingControl.READ
        )
        return {r["id"]: (dict(r["props"]), list(r["links"])) for r in records}

    def ids_after(self, kind: str, after: str | None, limit: int) -> list[str]:
        """A page of node ids of ``kind`` in id order (graph verify walks Neo4j with it)."""
        q = (
            f"MATCH (n:{LABELS[kind]}) WHERE n.id IS NOT NULL AND ($after IS NULL OR n.id > $after) "
            f"RETURN n.id AS id ORDER BY id LIMIT $limit"
        )
        records, _, _ = self.driver.execute_query(
            q, after=after, limit=limit, database_=self.database, routing_=neo4j.RoutingControl.READ
        )
        return [str(r["id"]) for r in records]

    def linked_from(self, kind: str, ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """For nodes of ``kind`` among ``ids``: the (kind, id) of the projection nodes that link to them."""
        kinds = {label: k for k, label in LABELS.items()}
        records, _, _ = self.driver.execute_query(
            f"MATCH (s)-[:{REL_TYPES}]->(n:{LABELS[kind]}) WHERE n.id IN $ids "
            "RETURN n.id AS id, collect(DISTINCT [labels(s), s.id]) AS sources",
            ids=list(ids),
            database_=self.database,
            routing_=neo4j.RoutingControl.READ,
        )
        out: dict[str, list[tuple[str, str]]] = {}
        for r in records:
            for labels, sid in r["sources"]:
                for label in labels:
                    if label in kinds and sid is not None:
                        out.setdefault(r["id"], []).append((kinds[label], str(sid)))
        return out

    def delete_ids(self, kind: str, ids: Sequence[str]) -> int:
        q = f"UNWIND $ids AS id MATCH (n:{LABELS[kind]} {{id: id}}) DETACH DELETE n RETURN count(*) AS c"
        records, _, _ = self.driver.execute_query(q, ids=list(ids), database_=self.database)
        return int(records[0]["c"]) if records else 0

    def delete_without_id(self) -> int:
        """Nodes of the projection's labels without an id cannot be any aggregate (graph rebuild)."""
        total = 0
        for label in LABELS.values():
            records, _, _ = self.driver.execute_query(
                f"MATCH (n:{label}) WHERE n.id IS NULL DETACH DELETE n RETURN count(*) AS c",
                database_=self.database,
            )
            total += int(records[0]["c"])
        return total

    def wipe(self) -> None:
        """Delete every node of the projection's labels, tombstones and meta (tests, the demo's scratch graph)."""
        with self.driver.session(database=self.database) as session:
            # Signals first: an entity can hold thousands of relationships, a signal a few; once the signals
            # are gone, deleting an entity is small too (the transaction memory stays bounded).
            for label in ("Opportunity", "Signal", "Entity", TOMBSTONE, META):
                session.run(
                    f"MATCH (n:{label}) CALL (n) {{ DETACH DELETE n }} IN TRANSACTIONS OF 5000 ROWS"
                ).consume()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, label in LABELS.items():
            records, _, _ = self.driver.execute_query(
                f"MATCH (n:{label}) RETURN count(n) AS c", database_=self.database
            )
            out[kind] = int(records[0]["c"])
        return out


def _meta(record: Any) -> GraphMeta | None:
    if record is None:
        return None
    return GraphMeta(
        database_id=record["database_id"],
        epoch=int(record["epoch"]) if record["epoch"] is not None else None,
        high_water=int(record["high_water"] or 0),
        fence=int(record["fence"] or 0),
        diverged=record["diverged"],
    )
