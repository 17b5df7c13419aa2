"""Writing snapshots into Neo4j (and reading them back for verify).

One batch = one managed write transaction of a few UNWIND statements, MERGE on uniquely constrained ids.
Every node write is guarded by ``sync_version``: a snapshot older than what the node already shows is refused
(nothing of it is written, links included). Order inside the transaction: merged losers (move relationships
to the winner, then delete), plain deletes, then upserts of entities, signals, opportunities, so a winner's
refresh runs after its loser's relationships moved and trims them to what Postgres says.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import neo4j

LABELS: dict[str, str] = {"entity": "Entity", "signal": "Signal", "opportunity": "Opportunity"}
# (relationship type, target label) owned by each aggregate type, None when it owns no outgoing links.
LINKS: dict[str, tuple[str, str] | None] = {
    "entity": None,
    "signal": ("MENTIONS", "Entity"),
    "opportunity": ("INCLUDES", "Signal"),
}
# Relationships that point *at* a node of this type, moved to the winner when it is merged.
INCOMING: dict[str, tuple[str, str] | None] = {
    "entity": ("MENTIONS", "Signal"),
    "signal": ("INCLUDES", "Opportunity"),
    "opportunity": None,
}

CONSTRAINTS: tuple[str, ...] = tuple(
    f"CREATE CONSTRAINT sigledger_{kind}_id IF NOT EXISTS FOR (n:{label}) REQUIRE n.id IS UNIQUE"
    for kind, label in LABELS.items()
)


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


@dataclass
class WritePlan:
    """The statements of one batch, grouped by kind."""

    merges: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    deletes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    upserts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def of(cls, snapshots: Iterable[Snapshot]) -> WritePlan:
        plan = cls()
        for s in snapshots:
            if s.state == "present":
                plan.upserts.setdefault(s.aggregate_type, []).append(
                    {
                        "id": s.aggregate_id,
                        "version": s.version,
                        "props": s.props or {},
                        "links": list(s.links),
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
            out.append((merge_query(kind), {"rows": rows}))
        for kind, rows in self.deletes.items():
            out.append((delete_query(kind), {"rows": rows}))
        for kind in ("entity", "signal", "opportunity"):
            if kind in self.upserts:
                out.append((upsert_query(kind), {"rows": self.upserts[kind]}))
        return out


# A node written by a snapshot older than (or as old as) the one it already shows is left alone.
_NEWER = "(n.sync_version IS NULL OR n.sync_version < row.version)"


def upsert_query(kind: str) -> str:
    label = LABELS[kind]
    q = f"""
UNWIND $rows AS row
MERGE (n:{label} {{id: row.id}})
WITH n, row WHERE {_NEWER}
SET n = row.props, n.id = row.id, n.sync_version = row.version"""
    link = LINKS[kind]
    if link is not None:
        rel, target = link
        q += f"""
WITH n, row
CALL (n, row) {{
  OPTIONAL MATCH (n)-[r:{rel}]->(t:{target}) WHERE NOT t.id IN row.links
  DELETE r
}}
CALL (n, row) {{
  UNWIND row.links AS tid
  MERGE (t:{target} {{id: tid}})
  MERGE (n)-[:{rel}]->(t)
}}"""
    return q


def delete_query(kind: str) -> str:
    return f"""
UNWIND $rows AS row
MATCH (n:{LABELS[kind]} {{id: row.id}}) WHERE {_NEWER}
DETACH DELETE n"""


def merge_query(kind: str) -> str:
    """Loser -> winner: move the loser's relationships onto the winner, then delete the loser."""
    label = LABELS[kind]
    q = f"""
UNWIND $rows AS row
MATCH (n:{label} {{id: row.id}}) WHERE {_NEWER}
MERGE (w:{label} {{id: row.winner}})
WITH n, w"""
    out_link = LINKS[kind]
    if out_link is not None:
        rel, target = out_link
        q += f"""
CALL (n, w) {{
  MATCH (n)-[:{rel}]->(t:{target})
  MERGE (w)-[:{rel}]->(t)
}}"""
    in_link = INCOMING[kind]
    if in_link is not None:
        rel, source = in_link
        q += f"""
CALL (n, w) {{
  MATCH (s:{source})-[:{rel}]->(n)
  MERGE (s)-[:{rel}]->(w)
}}"""
    q += """
DETACH DELETE n"""
    return q


class Neo4jSink:
    """Neo4j side of the projection."""

    def __init__(self, driver: neo4j.Driver, database: str = "neo4j") -> None:
        self.driver = driver
        self.database = database

    def ensure_constraints(self) -> None:
        for stmt in CONSTRAINTS:
            self.driver.execute_query(stmt, database_=self.database)

    def write(self, snapshots: Sequence[Snapshot]) -> None:
        """All snapshots in one managed write transaction (retried by the driver, for a bounded time)."""
        statements = WritePlan.of(snapshots).statements()
        if not statements:
            return

        def work(tx: neo4j.ManagedTransaction) -> None:
            for query, params in statements:
                tx.run(query, params).consume()

        with self.driver.session(database=self.database) as session:
            session.execute_write(work)

    # ---- reads (verify, tests) ------------------------------------------------------------------------

    def fetch(self, kind: str, ids: Sequence[str]) -> dict[str, tuple[dict[str, Any], list[str]]]:
        """id -> (properties, sorted link target ids) for the nodes of ``kind`` among ``ids``."""
        label = LABELS[kind]
        link = LINKS[kind]
        if link is None:
            q = f"MATCH (n:{label}) WHERE n.id IN $ids RETURN n.id AS id, properties(n) AS props, [] AS links"
        else:
            rel, target = link
            q = (
                f"MATCH (n:{label}) WHERE n.id IN $ids "
                f"RETURN n.id AS id, properties(n) AS props, "
                f"COLLECT {{ MATCH (n)-[:{rel}]->(t:{target}) RETURN t.id ORDER BY t.id }} AS links"
            )
        records, _, _ = self.driver.execute_query(
            q, ids=list(ids), database_=self.database, routing_=neo4j.RoutingControl.READ
        )
        return {r["id"]: (dict(r["props"]), list(r["links"])) for r in records}

    def ids_after(self, kind: str, after: str | None, limit: int) -> list[str]:
        """A page of node ids of ``kind`` in id order (graph verify walks Neo4j with it)."""
        q = (
            f"MATCH (n:{LABELS[kind]}) WHERE $after IS NULL OR n.id > $after "
            f"RETURN n.id AS id ORDER BY id LIMIT $limit"
        )
        records, _, _ = self.driver.execute_query(
            q, after=after, limit=limit, database_=self.database, routing_=neo4j.RoutingControl.READ
        )
        return [r["id"] for r in records]

    def delete_ids(self, kind: str, ids: Sequence[str]) -> int:
        q = f"UNWIND $ids AS id MATCH (n:{LABELS[kind]} {{id: id}}) DETACH DELETE n RETURN count(*) AS c"
        records, _, _ = self.driver.execute_query(q, ids=list(ids), database_=self.database)
        return int(records[0]["c"]) if records else 0

    def wipe(self) -> None:
        """Delete every node of the projection's labels (tests, `graph rebuild --wipe`)."""
        # CALL ... IN TRANSACTIONS needs an auto-commit transaction (session.run), not a managed one.
        with self.driver.session(database=self.database) as session:
            for label in LABELS.values():
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
