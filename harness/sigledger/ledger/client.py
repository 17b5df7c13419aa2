# Generated from sigledger/ledger/aclient.py by tools/async_to_sync.py: do not edit, change the async source
# and run `make sync-gen`.
"""The cost ledger from Python: thin calls of the SQL API (record_cost, record_costs, cost_trends).

``CostRecord`` and ``BatchResult`` live in records.py (shared by the sync and the async ledger).
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from sigledger.core.db import Database
from sigledger.core.money import normalize_row
from sigledger.ledger.records import BatchResult, CostRecord, agent_sql, dumps, is_uuid

__all__ = ["BatchResult", "CostRecord", "Ledger"]


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db
        # agent name -> id: agents are never renamed or deleted through the API, so a name resolved once stays
        self._agent_ids: dict[str, str] = {}

    def record_cost(self, record: CostRecord) -> int:
        """Write one cost (idempotent by its key); returns the ledger row's id. An unknown agent name: NotFound."""
        row = self.db.call_one(
            "SELECT sigledger.record_cost(p_idempotency_key => %s::text, "
            + agent_sql(record.agent_id)
            + ", p_model => %s::text, p_provider => %s::text, p_input_tokens => %s::bigint,"
            " p_output_tokens => %s::bigint, p_cost_usd => %s::numeric, p_created_at => %s::timestamptz,"
            " p_metadata => %s::jsonb) AS id",
            (
                record.idempotency_key,
                record.agent_id,
                record.model,
                record.provider,
                record.input_tokens,
                record.output_tokens,
                record.cost_usd,
                record.created_at,
                Jsonb(record.metadata),
            ),
        )
        assert row is not None
        return int(row["id"])

    def resolve_agents(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The batch with agent names replaced by ids (record_costs takes ids). NotFound names the unknown one."""
        names = {
            r["agent_id"] for r in batch if isinstance(r.get("agent_id"), str) and not is_uuid(r["agent_id"])
        }
        for name in names - self._agent_ids.keys():
            row = self.db.call_one("SELECT sigledger.find_agent(p_name => %s::text) AS id", (name,))
            assert row is not None
            self._agent_ids[name] = str(row["id"])
        if not names:
            return batch
        return [{**r, "agent_id": self._agent_ids.get(r["agent_id"], r["agent_id"])} for r in batch]

    def record_costs(self, batch: list[dict[str, Any]]) -> BatchResult:
        """Write a batch of records (CostRecord.to_json() each) in one call; rows it cannot take are quarantined
        by the database. A batch naming an unknown agent raises NotFound (nothing written)."""
        batch = self.resolve_agents(batch)
        row = self.db.call_one(
            "SELECT inserted, duplicates, quarantined FROM sigledger.record_costs(p_batch => %s::jsonb)",
            (Jsonb(batch, dumps=dumps),),
        )
        assert row is not None
        return BatchResult(int(row["inserted"]), int(row["duplicates"]), int(row["quarantined"]))

    def cost_trends(self, days: int) -> list[dict[str, Any]]:
        """Spend per day over the last ``days`` days (1..3650)."""
        rows = self.db.call(
            "SELECT day, total_usd, calls, input_tokens, output_tokens FROM sigledger.cost_trends(p_days => %s::integer)",
            (days,),
        )
        return [normalize_row(r) for r in rows]
