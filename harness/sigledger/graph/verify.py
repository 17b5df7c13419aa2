"""`graph verify`: diff Postgres (the truth) against Neo4j (the projection).

- missing: live in Postgres, no node in Neo4j;
- extra:   a node in Neo4j whose aggregate is gone (or merged away) in Postgres;
- stale:   both exist, but the properties or the links differ (or the node is a stub never written itself).

Both sides are walked in id order, a page at a time, so memory stays flat. Run it when the backlog is empty
(`graph status`): rows still pending are drift that the workers are about to repair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row

from .sink import LABELS, Neo4jSink, Snapshot

KINDS: tuple[str, ...] = tuple(LABELS)
IGNORED_PROPS = frozenset({"sync_version"})


@dataclass
class Drift:
    missing: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    extra: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    stale: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    checked: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    details: dict[str, str] = field(default_factory=dict)  # "kind id" -> what differs (first few)

    @property
    def clean(self) -> bool:
        return (
            not any(self.missing.values()) and not any(self.extra.values()) and not any(self.stale.values())
        )

    def totals(self) -> dict[str, int]:
        return {
            "missing": sum(map(len, self.missing.values())),
            "extra": sum(map(len, self.extra.values())),
            "stale": sum(map(len, self.stale.values())),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "checked": self.checked,
            "totals": self.totals(),
            "missing": self.missing,
            "extra": self.extra,
            "stale": self.stale,
            "details": self.details,
        }


def _snapshots(conn: psycopg.Connection[Any], kind: str, ids: list[str]) -> dict[str, Snapshot]:
    from .worker import _snapshot  # one row -> Snapshot conversion, shared with the worker

    with conn.transaction():
        rows = conn.execute(
            "SELECT * FROM sigledger._graph_snapshot(p_types => %s::text[], p_ids => %s::uuid[])",
            ([kind] * len(ids), ids),
        ).fetchall()
    return {str(r.aggregate_id): _snapshot(r) for r in rows if r.aggregate_type == kind}


def _difference(snap: Snapshot, node: tuple[dict[str, Any], list[str]]) -> str | None:
    props, links = node
    if props.get("sync_version") is None:
        return "node is a stub (created by a link, never written from its own row)"
    shown = {k: v for k, v in props.items() if k not in IGNORED_PROPS}
    want = snap.props or {}
    if shown != want:
        keys = sorted(k for k in set(shown) | set(want) if shown.get(k) != want.get(k))
        return "properties differ: " + ", ".join(keys[:5])
    if sorted(links) != sorted(snap.links):
        return f"links differ: Neo4j has {len(links)}, Postgres {len(snap.links)}"
    return None


def verify(
    dsn: str, sink: Neo4jSink, *, page: int = 1000, progress: Callable[[str, int], None] | None = None
) -> Drift:
    drift = Drift()
    with psycopg.connect(dsn, application_name="sigledger-graph-verify", row_factory=namedtuple_row) as conn:
        for kind in KINDS:
            # Postgres -> Neo4j: missing and stale.
            after: str | None = None
            while True:
                with conn.transaction():
                    ids = [
                        str(r[0])
                        for r in conn.execute(
                            "SELECT * FROM sigledger._graph_live_ids(p_aggregate_type => %s::text, "
                            "p_after => %s::uuid, p_limit => %s::integer)",
                            (kind, after, page),
                        ).fetchall()
                    ]
                if not ids:
                    break
                after = ids[-1]
                snaps = _snapshots(conn, kind, ids)
                nodes = sink.fetch(kind, ids)
                for i in ids:
                    snap = snaps[i]
                    if snap.state != "present":
                        continue  # changed under us: merged or deleted since the page was read
                    if i not in nodes:
                        drift.missing[kind].append(i)
                        continue
                    why = _difference(snap, nodes[i])
                    if why is not None:
                        drift.stale[kind].append(i)
                        if len(drift.details) < 50:
                            drift.details[f"{kind} {i}"] = why
                drift.checked[kind] += len(ids)
                if progress is not None:
                    progress(kind, len(ids))
            # Neo4j -> Postgres: extra.
            after = None
            while True:
                ids = sink.ids_after(kind, after, page)
                if not ids:
                    break
                after = ids[-1]
                valid = [i for i in ids if _is_uuid(i)]
                drift.extra[kind].extend(i for i in ids if not _is_uuid(i))
                snaps = _snapshots(conn, kind, valid)
                drift.extra[kind].extend(i for i in valid if snaps[i].state != "present")
    return drift


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True
