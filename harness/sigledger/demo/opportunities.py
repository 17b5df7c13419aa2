"""The demo's opportunity phase: create, link, merge (opportunities and entity variants)."""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import Counter
from typing import Any

from sigledger.core.db import Database
from sigledger.core.errors import (
    MergeConflict,
)
from sigledger.demo.report import Report
from sigledger.demo.workload import Company
from sigledger.ingest.client import merge_opportunities


def create_and_merge(
    db: Database, companies: list[Company], *, seed: int, run_id: str, stop: threading.Event, report: Report
) -> dict[str, Any]:
    """Opportunities per company from its signals, duplicates merged, entity variants merged into their
    company, and one late merge of a tombstone that must be refused."""
    rng = random.Random(seed + 2)
    result: Counter[str] = Counter()
    first_merge: tuple[str, str] | None = None
    # entity variants ("X Holdings") created from unknown mentions are merged into their company
    for c in companies:
        variant = db.call_one(
            "SELECT sigledger.resolve_entity(p_name => %s::text) AS id", (f"{c.name} Holdings",)
        )
        if variant and variant["id"] is not None and str(variant["id"]) != c.id:
            row = db.call_one(
                "SELECT moved_links FROM sigledger.merge_entities(p_target => %s::uuid, p_sources => %s::uuid[])",
                (c.id, [str(variant["id"])]),
            )
            result["entity_merges"] += 1
            result["entity_links_moved"] += int(row["moved_links"]) if row else 0
    for c in companies:
        if stop.is_set():
            break
        signal_ids = [
            str(r["signal_id"])
            for r in db.call(
                "SELECT signal_id FROM sigledger.entity_signals_of(p_entity_id => %s::uuid)", (c.id,)
            )
        ]
        if not signal_ids:
            continue
        # two or three agents each opened an opportunity about the same company: duplicates
        opp_ids = []
        for k in range(rng.choice((1, 2, 2, 3))):
            row = db.call_one(
                "SELECT sigledger.create_opportunity(p_title => %s::text, p_description => %s::text,"
                " p_score => %s::numeric, p_value_usd => %s::numeric, p_attributes => %s::jsonb) AS id",
                (
                    f"Opportunity at {c.name}",
                    None if k == 0 else f"seen by agent {k}",
                    round(rng.uniform(10, 95), 2),
                    round(rng.uniform(1000, 250000), 2),
                    json.dumps({"source_agent": k, "run": run_id}),
                ),
            )
            assert row is not None
            opp_ids.append(str(row["id"]))
            subset = rng.sample(signal_ids, k=max(1, int(len(signal_ids) * 0.6)))
            linked = db.call_one(
                "SELECT linked FROM sigledger.link_signals(p_opportunity_id => %s::uuid, p_signal_ids => %s::uuid[])",
                (opp_ids[-1], subset),
            )
            result["opportunities"] += 1
            result["links"] += int(linked["linked"]) if linked else 0
        if len(opp_ids) > 1:
            merged = merge_opportunities(db, uuid.UUID(opp_ids[0]), [uuid.UUID(o) for o in opp_ids[1:]])
            result["merges"] += 1
            result["merged_sources"] += len(opp_ids) - 1
            result["moved_links"] += int(merged["moved_links"])
            result["duplicate_links"] += int(merged["duplicate_links"])
            first_merge = first_merge or (opp_ids[0], opp_ids[1])
    if first_merge is not None:
        # a late duplicate merge of an opportunity that is already a tombstone: refused, nothing changes
        target, source = first_merge
        try:
            merge_opportunities(db, uuid.UUID(target), [uuid.UUID(source)])
            result["unexpected_merges"] += 1
        except MergeConflict as exc:
            result["refused_merges"] += 1
            report.opportunities_refused = str(exc).splitlines()[0]
    return dict(result)
