"""`graph rebuild`: make the graph this database's projection again, from any state.

1. Plan: verify (what is missing, extra, stale) and the highest version anything in the graph carries,
   whatever database, epoch or backup wrote it.
2. A new epoch (sigledger._graph_adopt): the version sequence moves above that highest version, so every
   snapshot from now on wins over anything in the graph; in the same Postgres transaction, a refresh row for
   every live aggregate and one for every extra node with a UUID id (it becomes a delete). So the epoch is
   never without its refreshes, whatever point a rebuild dies at.
3. Then the graph's meta node takes the new epoch and a fence at its floor (a batch read before the rebuild
   can no longer commit; tombstones go, every one is below the fence). Until then workers refuse to write
   (the epochs differ) and the rows wait; a rerun of rebuild writes it. Nodes that cannot be an aggregate at
   all (no id, or an id that is not a UUID) are deleted directly.
4. The workers (or this process, with drain) project them like ordinary changes: same locks, versions,
   retries; the graph stays readable meanwhile. Upserts rewrite every property and trim relationships to
   exactly one per link Postgres has (duplicates, foreign types and targets go).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sigledger.core.db import connect as db_connect

from .sink import GraphMeta, Neo4jSink
from .verify import Drift, _is_uuid, verify


@dataclass
class RebuildPlan:
    live: dict[str, int] = field(default_factory=dict)  # refreshes to enqueue, per kind
    extra: dict[str, list[str]] = field(default_factory=dict)  # Neo4j nodes Postgres does not have
    drift: Drift | None = None
    graph_version: int = 0  # the highest version anything in the graph carries
    meta: GraphMeta | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "refresh": self.live,
            "delete": {k: len(v) for k, v in self.extra.items()},
            "drift_before": self.drift.totals() if self.drift else None,
            "graph": {
                "database_id": self.meta.database_id if self.meta else None,
                "epoch": self.meta.epoch if self.meta else None,
                "highest_version": self.graph_version,
            },
        }


@dataclass(frozen=True)
class Adopted:
    database_id: str
    epoch: int
    floor: int


def plan(dsn: str, sink: Neo4jSink, progress: Callable[[str, int], None] | None = None) -> RebuildPlan:
    drift = verify(dsn, sink, progress=progress)
    with db_connect(dsn, application_name="sigledger-graph-rebuild") as conn:
        row = conn.execute("SELECT * FROM sigledger._graph_live_counts()").fetchone()
    assert row is not None
    return RebuildPlan(
        live={"entity": int(row[0]), "signal": int(row[1]), "opportunity": int(row[2])},
        extra={k: list(v) for k, v in drift.extra.items()},
        drift=drift,
        graph_version=sink.max_version(),
        meta=sink.read_meta(),
    )


def enqueue(dsn: str, sink: Neo4jSink, rebuild_plan: RebuildPlan) -> int:
    """A new epoch, then the plan's refreshes and deletes; returns the number of outbox rows written.

    The epoch and its refreshes commit in one Postgres transaction, before the graph's meta node takes the
    epoch: a rebuild that dies before that commit changed nothing; one that dies after it leaves the rows in
    the outbox, refused by the workers (the graph still holds the old epoch) until a rerun writes the meta
    node, or projected by them if the meta node was written. Either way nothing is lost."""
    with db_connect(dsn, application_name="sigledger-graph-rebuild") as conn, conn.transaction():
        row = conn.execute(
            "SELECT database_id::text, epoch, floor_version FROM sigledger._graph_adopt(p_graph_version => %s)",
            (rebuild_plan.graph_version,),
        ).fetchone()
        assert row is not None
        adopted = Adopted(database_id=row[0], epoch=int(row[1]), floor=int(row[2]))
        total = 0
        for _kind, n in conn.execute("SELECT * FROM sigledger._graph_enqueue_all()").fetchall():
            total += int(n)
        for kind, ids in rebuild_plan.extra.items():
            uuids = [i for i in ids if _is_uuid(i)]
            if uuids:
                counted = conn.execute(
                    "SELECT sigledger._graph_enqueue(p_aggregate_type => %s::text, p_ids => %s::uuid[])",
                    (kind, uuids),
                ).fetchone()
                total += int(counted[0]) if counted else 0
    # Until this write the workers refuse (the epochs differ) and the rows wait.
    sink.adopt(adopted.database_id, adopted.epoch, adopted.floor)
    sink.delete_without_id()
    for kind, ids in rebuild_plan.extra.items():
        junk = [i for i in ids if not _is_uuid(i)]
        if junk:
            sink.delete_ids(kind, junk)
    return total
