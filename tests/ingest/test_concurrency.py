"""Real processes ingesting, linking and merging at once (opportunities and entities).

Checks: no deadlock, serialization or lock-timeout error reaches any caller; the only error a caller sees is
SLM01 from a merge that picked an id a concurrent merge had already turned into a tombstone; every signal
link survives, on the live opportunity/entity its original one was merged into (count invariant, as sets);
nothing points at a tombstone; one row per (source, external_id)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

WORKERS = Path(__file__).resolve().parent / "load_workers.py"

HEAD = """
WITH RECURSIVE chain (start, cur, next) AS (
    SELECT o.id, o.id, o.merged_into FROM sigledger.{table} o
    UNION ALL
    SELECT chain.start, o.id, o.merged_into FROM chain JOIN sigledger.{table} o ON o.id = chain.next)
SELECT start::text, cur::text FROM chain WHERE next IS NULL
"""


def _seed(conn: psycopg.Connection) -> set[tuple[str, str]]:
    """40 entities, 60 opportunities with 4 seed signals each; returns the initial opportunity links."""
    conn.execute(
        "SELECT * FROM sigledger.ingest_signals((SELECT jsonb_agg(jsonb_build_object('source', 'seed', "
        "'external_id', i, 'occurred_at', '2026-01-01', 'mentions', jsonb_build_array('Entity ' || (i % 40)))) "
        "FROM generate_series(0, 239) i))"
    )
    links: set[tuple[str, str]] = set()
    signals = [
        str(r[0])
        for r in conn.execute("SELECT id FROM sigledger.signals ORDER BY external_id::int").fetchall()
    ]
    for n in range(60):
        opp = str(conn.execute("SELECT sigledger.create_opportunity(%s)", (f"opp {n}",)).fetchone()[0])
        chunk = signals[n * 4 : n * 4 + 4]
        conn.execute("SELECT sigledger.link_signals(%s, %s::uuid[])", (opp, chunk))
        links |= {(opp, s) for s in chunk}
    return links


@pytest.mark.slow
def test_processes_ingesting_linking_and_merging(conn: psycopg.Connection, db_dsn: str, app_dsn: str) -> None:
    initial_links = _seed(conn)
    seed_mentions = {
        (str(sid), f"entity {int(ext) % 40}")
        for sid, ext in conn.execute("SELECT id, external_id FROM sigledger.signals").fetchall()
    }
    plan = [("ingest", 1, 40), ("ingest", 2, 40), ("merge", 3, 25), ("merge", 4, 25), ("entity-merge", 5, 14)]
    conn.execute("SELECT pg_advisory_lock(4242)")  # start barrier, see load_workers.main
    procs = [
        (
            role,
            subprocess.Popen(
                [sys.executable, str(WORKERS), role, app_dsn, str(seed), str(n)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for role, seed, n in plan
    ]
    for _ in range(600):
        waiting = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()[0]
        if waiting == len(procs) or any(p.poll() is not None for _, p in procs):
            break
        time.sleep(0.05)
    conn.execute("SELECT pg_advisory_unlock(4242)")
    reports: list[tuple[str, dict[str, Any]]] = []
    for role, proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{role} worker failed:\n{err}"
        reports.append((role, json.loads(out)))

    # 1. errors that reached callers: only SLM01, and only from merges.
    for role, report in reports:
        allowed = {"SLM01"} if role != "ingest" else set()
        assert set(report["errors"]) <= allowed, (role, report["errors"])
    merges = sum(r["merged"] for role, r in reports if role == "merge")
    entity_merges = sum(r["merged"] for role, r in reports if role == "entity-merge")
    assert merges > 0 and entity_merges > 0, "the load did not merge anything: the test proves nothing"
    assert conn.execute("SELECT count(*) FROM sigledger.opportunity_merges").fetchone()[0] == merges
    assert conn.execute("SELECT count(*) FROM sigledger.entity_merges").fetchone()[0] == entity_merges

    # 2. nothing points at a tombstone.
    for sql in (
        "SELECT count(*) FROM sigledger.opportunity_signals x JOIN sigledger.opportunities o ON o.id = x.opportunity_id WHERE o.merged_into IS NOT NULL",
        "SELECT count(*) FROM sigledger.signal_entities x JOIN sigledger.entities e ON e.id = x.entity_id WHERE e.merged_into IS NOT NULL",
        "SELECT count(*) FROM sigledger.entity_aliases x JOIN sigledger.entities e ON e.id = x.canonical_entity_id WHERE e.merged_into IS NOT NULL",
    ):
        assert conn.execute(sql).fetchone()[0] == 0, sql

    # 3. opportunity links: every link ever made is on the live head of the opportunity it was made on.
    head = dict(conn.execute(HEAD.format(table="opportunities")).fetchall())
    made = set(initial_links)
    for _role, report in reports:
        for link in report.get("links", []):
            made |= {(link["linked_to"], s) for s in link["signals"]}
    expected = {(head[o], s) for o, s in made}
    actual = {
        (str(o), str(s))
        for o, s in conn.execute("SELECT opportunity_id, signal_id FROM sigledger.opportunity_signals")
    }
    assert actual == expected
    assert len(made) > len(initial_links)

    # 4. entity links: each created signal is linked to the live entity that now holds each mention's alias.
    mentions = set(seed_mentions)
    created = [c for role, r in reports for c in r.get("created", [])]
    for c in created:
        mentions |= {(c["signal_id"], m.lower()) for m in c["mentions"]}
    alias_owner = dict(
        conn.execute(
            "SELECT lower(alias), canonical_entity_id::text FROM sigledger.entity_aliases"
        ).fetchall()
    )
    expected_entity_links = {(s, alias_owner[m]) for s, m in mentions}
    actual_entity_links = {
        (str(s), str(e))
        for s, e in conn.execute("SELECT signal_id, entity_id FROM sigledger.signal_entities")
    }
    assert actual_entity_links == expected_entity_links

    # 5. the shared keys were ingested by both workers, created once.
    created_ids = [c["signal_id"] for c in created]
    assert len(created_ids) == len(set(created_ids))
    assert conn.execute("SELECT count(*) FROM sigledger.signals WHERE source = 'load'").fetchone()[0] == len(
        created_ids
    )
    assert (
        conn.execute("SELECT count(*) FROM sigledger.signals WHERE external_id LIKE 'shared-%'").fetchone()[0]
        == 40 * 6
    )
