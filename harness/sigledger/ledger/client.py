"""The cost ledger from Python: thin calls of the SQL API (record_cost, record_costs, cost_trends)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from sigledger.core.db import Database


@dataclass(frozen=True)
class CostRecord:
    """One LLM call's cost, as record_cost takes it. ``cost_usd`` None: priced by the database."""

    agent_id: str
    model: str
    provider: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = None
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    metadata: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str = field(default_factory=lambda: f"cost:{uuid.uuid4()}")

    def to_json(self) -> dict[str, Any]:
        """The record_costs batch element (and the spool line)."""
        return {
            "idempotency_key": self.idempotency_key,
            "agent_id": self.agent_id,
            "model": self.model,
            "provider": self.provider,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": None if self.cost_usd is None else str(self.cost_usd),
            "created_at": self.created_at.isoformat(),
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CostRecord:
        return cls(
            agent_id=data["agent_id"],
            model=data["model"],
            provider=data["provider"],
            input_tokens=int(data.get("input_tokens") or 0),
            output_tokens=int(data.get("output_tokens") or 0),
            cost_usd=None if data.get("cost_usd") is None else Decimal(str(data["cost_usd"])),
            created_at=dt.datetime.fromisoformat(data["created_at"]),
            metadata=dict(data.get("metadata") or {}),
            idempotency_key=data["idempotency_key"],
        )


@dataclass(frozen=True)
class BatchResult:
    inserted: int
    duplicates: int
    quarantined: int


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record_cost(self, record: CostRecord) -> int:
        row = self.db.call_one(
            "SELECT sigledger.record_cost(p_idempotency_key => %s::text, p_agent_id => %s::uuid,"
            " p_model => %s::text, p_provider => %s::text, p_input_tokens => %s::bigint,"
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

    def record_costs(self, batch: list[dict[str, Any]]) -> BatchResult:
        row = self.db.call_one(
            "SELECT inserted, duplicates, quarantined FROM sigledger.record_costs(p_batch => %s::jsonb)",
            (Jsonb(batch, dumps=_dumps),),
        )
        assert row is not None
        return BatchResult(int(row["inserted"]), int(row["duplicates"]), int(row["quarantined"]))

    def cost_trends(self, days: int) -> list[dict[str, Any]]:
        return self.db.call(
            "SELECT day, total_usd, calls, input_tokens, output_tokens FROM sigledger.cost_trends(p_days => %s::integer)",
            (days,),
        )


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
