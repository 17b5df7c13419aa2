"""What the sync and the async ledger share: ``CostRecord`` (one LLM call's cost), ``BatchResult``, the checks
``record()`` makes before it acknowledges a record, and how an agent is named in SQL (by id or by name)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sigledger.core.errors import InvalidInput
from sigledger.core.money import money


def is_uuid(value: object) -> bool:
    if isinstance(value, uuid.UUID):
        return True
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def agent_sql(agent: str | uuid.UUID, param: str = "p_agent_id") -> str:
    """The SQL argument for an agent given by id or by name: a name is resolved in the same statement through
    find_agent (P0002 -> NotFound when there is no such agent), so naming an agent costs no extra round trip."""
    if is_uuid(agent):
        return f"{param} => %s::uuid"
    return f"{param} => sigledger.find_agent(p_name => %s::text)"


def optional_agent_sql(agent: str | uuid.UUID | None, param: str = "p_agent_id") -> str:
    """``agent_sql`` for an optional agent (a filter): None passes NULL (pass ``None`` as its parameter)."""
    return f"{param} => %s::uuid" if agent is None else agent_sql(agent, param)


@dataclass(frozen=True)
class CostRecord:
    """One LLM call's cost, as record_cost takes it. ``agent_id``: the agent's id or its name. ``cost_usd``: a
    Decimal or an int (a float is refused with TypeError, see sigledger.core.money); None: priced by the
    database from the tokens and the model's price."""

    agent_id: str
    model: str
    provider: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = None
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    metadata: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str = field(default_factory=lambda: f"cost:{uuid.uuid4()}")

    def __post_init__(self) -> None:
        if self.cost_usd is not None:  # NaN/Infinity: validate_record() refuses them with InvalidInput
            object.__setattr__(self, "cost_usd", money(self.cost_usd, "cost_usd"))
        if isinstance(self.agent_id, uuid.UUID):
            object.__setattr__(self, "agent_id", str(self.agent_id))

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


_JSON_SCALARS = (bool, int, decimal.Decimal, dt.datetime, dt.date, dt.time, uuid.UUID)


def _check_str(value: str, where: str) -> None:
    if "\x00" in value:
        raise InvalidInput(f"{where}: contains a NUL character (\\u0000), which PostgreSQL cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{where}: not valid Unicode ({exc.reason})") from None


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    """Raise InvalidInput unless ``value`` is JSON that jsonb accepts (Decimal, datetime and UUID as strings)."""
    if depth > 100:
        raise InvalidInput(f"{where}: nested too deeply")
    if value is None or isinstance(value, _JSON_SCALARS):
        if isinstance(value, decimal.Decimal) and not value.is_finite():
            raise InvalidInput(f"{where}: {value} is not a finite number")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{where}: {value} is not a finite number")
        return
    if isinstance(value, str):
        _check_str(value, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                _check_str(key, f"{where}: key {key!r}")
            elif isinstance(key, float) and not math.isfinite(key):
                raise InvalidInput(f"{where}: key {key!r} is not a finite number")
            elif not (key is None or isinstance(key, (int, float))):
                raise InvalidInput(f"{where}: key {key!r} is not a JSON object key")
            _check_json(item, f"{where}.{key}", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
        return
    raise InvalidInput(f"{where}: a {type(value).__name__} is not JSON")


def validate_record(rec: CostRecord) -> None:
    """What record() checks: everything the database could never accept as JSON raises InvalidInput here."""
    if not isinstance(rec, CostRecord):
        raise InvalidInput(f"record: expected a CostRecord, got a {type(rec).__name__}")
    for name in ("idempotency_key", "agent_id", "model", "provider"):
        value = getattr(rec, name)
        if not isinstance(value, str):
            raise InvalidInput(f"{name}: expected a string, got a {type(value).__name__}")
        _check_str(value, name)
    for name in ("input_tokens", "output_tokens"):
        value = getattr(rec, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name}: expected an integer, got a {type(value).__name__}")
    if rec.cost_usd is not None and not rec.cost_usd.is_finite():
        raise InvalidInput(f"cost_usd: {rec.cost_usd} is not a finite number")
    if not isinstance(rec.created_at, dt.datetime):
        raise InvalidInput(f"created_at: expected a datetime, got a {type(rec.created_at).__name__}")
    if not isinstance(rec.metadata, dict):
        raise InvalidInput(f"metadata: expected a dict, got a {type(rec.metadata).__name__}")
    _check_json(rec.metadata, "metadata")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
