"""`graph verify`: diff Postgres (the truth) against Neo4j (the projection).

- missing: live in Postgres, no node in Neo4j;
- extra:   a node in Neo4j whose aggregate is gone (or merged away) in Postgres;
- stale:   both exist, but the properties or the outgoing relationships differ (a duplicate relationship, one
           of another type or to another label included), or the node is a stub never written itself.

Both sides are walked in id order, a page at a time, so memory stays flat.

Plain mode compares what it reads: run it with an empty backlog (rows still pending are drift that the
workers are about to repair). ``consistent`` compares while workers run: each page is compared inside one
Postgres transaction that holds, for every aggregate of the page, the lock a worker takes to project it
(sigledger._graph_hold). While held, no worker writes the aggregate, so an aggregate without pending outbox
rows must match exactly: a difference is drift. An aggregate a worker holds, or with pending rows, is work in
flight (reported as such, not as drift). A stub node is in flight when an aggregate that links to it is.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row

from sigledger.core.db import connect as db_connect

from .batch import snapshot_of
from .sink import LABELS, Neo4jSink, Snapshot

KINDS: tuple[str, ...] = tuple(LABELS)
IGNORED_PROPS = frozenset({"sync_version"})


@dataclass
class Drift:
    missing: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    extra: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    stale: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    in_flight: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    checked: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    details: dict[str, str] = field(default_factory=dict)  # "kind id" -> what differs (first few)
    consistent: bool = False

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
            "in_flight": sum(map(len, self.in_flight.values())),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "consistent": self.consistent,
            "checked": self.checked,
            "totals": self.totals(),
            "missing": self.missing,
            "extra": self.extra,
            "stale": self.stale,
            "in_flight": self.in_flight,
            "details": self.details,
        }

    def note(self, what: str, kind: str, ident: str, why: str | None = None) -> None:
        getattr(self, what)[kind].append(ident)
        if why is not None and len(self.details) < 50:
            self.details[f"{kind} {ident}"] = why


@dataclass(frozen=True)
class Hold:
    held: bool
    pending: int
    dead: int

    @property
    def in_flight(self) -> bool:
        return not self.held or self.pending > 0


class Holds:
    """The locks of one page (taken first), and the outbox counted again after everything was read: a change
    that committed after the lock was taken cannot have been projected yet, so it shows as pending here."""

    def __init__(self, conn: psycopg.Connection[Any], keys: Sequence[tuple[str, str]]) -> None:
        self.conn = conn
        self.taken = _hold(conn, keys)

    def take(self, keys: Sequence[tuple[str, str]]) -> None:
        self.taken.update(_hold(self.conn, [k for k in keys if k not in self.taken]))

    def final(self) -> dict[tuple[str, str], Hold]:
        recount = _hold(self.conn, list(self.taken))
        return {k: Hold(self.taken[k].held, r.pending, r.dead) for k, r in recount.items()}


def _snapshots(conn: psycopg.Connection[Any], kind: str, ids: Sequence[str]) -> dict[str, Snapshot]:
    rows = conn.execute(
        "SELECT * FROM sigledger._graph_snapshot(p_types => %s::text[], p_ids => %s::uuid[])",
        ([kind] * len(ids), list(ids)),
    ).fetchall()
    return {str(r.aggregate_id): snapshot_of(r) for r in rows if r.aggregate_type == kind}


def _hold(conn: psycopg.Connection[Any], keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Hold]:
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT * FROM sigledger._graph_hold(p_types => %s::text[], p_ids => %s::uuid[])",
        ([k for k, _ in keys], [i for _, i in keys]),
    ).fetchall()
    return {(r.aggregate_type, str(r.aggregate_id)): Hold(r.held, int(r.pending), int(r.dead)) for r in rows}


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
        foreign = [x for x in links if "->" in x]
        extra = f" ({len(foreign)} of another type or target)" if foreign else ""
        return f"relationships differ: Neo4j has {len(links)}{extra}, Postgres {len(snap.links)}"
    return None


def _compare_live(
    conn: psycopg.Connection[Any], sink: Neo4jSink, kind: str, ids: list[str], drift: Drift
) -> None:
    holds = Holds(conn, [(kind, i) for i in ids]) if drift.consistent else None
    snaps = _snapshots(conn, kind, ids)
    nodes = sink.fetch(kind, ids)
    final = holds.final() if holds is not None else {}
    for i in ids:
        snap = snaps[i]
        if snap.state != "present":
            continue  # changed under us: merged or deleted since the page was read
        why = "no node" if i not in nodes else _difference(snap, nodes[i])
        if why is None:
            continue
        hold = final.get((kind, i))
        if hold is not None and hold.in_flight:
            drift.note("in_flight", kind, i)
            continue
        if hold is not None and hold.dead:
            why += f" ({hold.dead} dead outbox row(s): see `graph dead list`)"
        drift.note("missing" if i not in nodes else "stale", kind, i, why)


def _compare_extra(
    conn: psycopg.Connection[Any], sink: Neo4jSink, kind: str, ids: list[str], drift: Drift
) -> None:
    valid = [i for i in ids if _is_uuid(i)]
    for i in ids:
        if not _is_uuid(i):
            drift.note("extra", kind, i, "id is not a UUID: no aggregate can have it")
    if not valid:
        return
    if not drift.consistent:
        snaps = _snapshots(conn, kind, valid)
        for i in valid:
            if snaps[i].state != "present":
                drift.note("extra", kind, i)
        return
    holds = Holds(conn, [(kind, i) for i in valid])
    snaps = _snapshots(conn, kind, valid)
    gone = [i for i in valid if snaps[i].state != "present"]
    nodes = sink.fetch(kind, gone)  # again, under the locks: a worker may have deleted it meanwhile
    stubs = [i for i in gone if i in nodes and nodes[i][0].get("sync_version") is None]
    # A stub lives as long as a link to it: the aggregates linking to it decide. Hold them too, then look
    # again (until the set of sources holds still: a bounded number of rounds, the last one decides).
    sources: dict[str, list[tuple[str, str]]] = {}
    for _ in range(3):
        holds.take(sorted({s for v in sources.values() for s in v}))
        seen = sink.linked_from(kind, stubs)
        if all(s in holds.taken for v in seen.values() for s in v):
            sources = seen
            break
        sources = seen
    holds.take(sorted({s for v in sources.values() for s in v}))
    still = sink.fetch(kind, stubs)
    for i in stubs:
        if i not in still:
            nodes.pop(i)  # a source's write removed it while we took the locks
    final = holds.final()
    for i in gone:
        if i not in nodes:
            continue
        if final[(kind, i)].in_flight or any(final[s].in_flight for s in sources.get(i, ())):
            drift.note("in_flight", kind, i)
        else:
            drift.note("extra", kind, i, "stub" if i in stubs else None)


def verify(
    dsn: str,
    sink: Neo4jSink,
    *,
    page: int = 1000,
    progress: Callable[[str, int], None] | None = None,
    consistent: bool = False,
) -> Drift:
    drift = Drift(consistent=consistent)
    with db_connect(dsn, application_name="sigledger-graph-verify", row_factory=namedtuple_row) as conn:
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
                    if ids:
                        # One transaction per page: in consistent mode the locks are held until it ends.
                        _compare_live(conn, sink, kind, ids, drift)
                if not ids:
                    break
                after = ids[-1]
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
                with conn.transaction():
                    _compare_extra(conn, sink, kind, ids, drift)
    return drift


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True
