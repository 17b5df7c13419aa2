"""`graph rebuild`: re-project everything through the outbox.

A refresh row is enqueued for every live aggregate and for every Neo4j node that Postgres no longer has (those
become deletes); the workers (or this process, with ``drain``) then project them exactly like ordinary
changes: same locks, same versions, same retries. Nothing is wiped first, so the graph stays readable while
it is rebuilt; a node of an id that is not a UUID cannot be an aggregate and is deleted directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .sink import Neo4jSink
from .verify import Drift, _is_uuid, verify


@dataclass
class RebuildPlan:
    live: dict[str, int] = field(default_factory=dict)  # refreshes to enqueue, per kind
    extra: dict[str, list[str]] = field(default_factory=dict)  # Neo4j nodes Postgres does not have
    drift: Drift | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "refresh": self.live,
            "delete": {k: len(v) for k, v in self.extra.items()},
            "drift_before": self.drift.totals() if self.drift else None,
        }


def plan(dsn: str, sink: Neo4jSink, progress: Callable[[str, int], None] | None = None) -> RebuildPlan:
    drift = verify(dsn, sink, progress=progress)
    with psycopg.connect(dsn, application_name="sigledger-graph-rebuild") as conn:
        row = conn.execute("SELECT * FROM sigledger._graph_live_counts()").fetchone()
    assert row is not None
    return RebuildPlan(
        live={"entity": int(row[0]), "signal": int(row[1]), "opportunity": int(row[2])},
        extra={k: list(v) for k, v in drift.extra.items()},
        drift=drift,
    )


def enqueue(dsn: str, sink: Neo4jSink, rebuild_plan: RebuildPlan) -> int:
    """Enqueue the plan; returns the number of outbox rows written."""
    total = 0
    with psycopg.connect(dsn, application_name="sigledger-graph-rebuild") as conn, conn.transaction():
        for _kind, n in conn.execute("SELECT * FROM sigledger._graph_enqueue_all()").fetchall():
            total += int(n)
        for kind, ids in rebuild_plan.extra.items():
            uuids = [i for i in ids if _is_uuid(i)]
            if uuids:
                row = conn.execute(
                    "SELECT sigledger._graph_enqueue(p_aggregate_type => %s::text, p_ids => %s::uuid[])",
                    (kind, uuids),
                ).fetchone()
                total += int(row[0]) if row else 0
    for kind, ids in rebuild_plan.extra.items():
        junk = [i for i in ids if not _is_uuid(i)]
        if junk:
            sink.delete_ids(kind, junk)
    return total
