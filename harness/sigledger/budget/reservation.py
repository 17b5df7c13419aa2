"""What ``BudgetGuard.reserve`` yields (shared by the sync and the async guard)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sigledger.core.money import money
from sigledger.ledger.records import CostRecord


@dataclass
class Reservation:
    """What ``BudgetGuard.reserve`` yields. Call ``set_cost`` inside the block; the guard settles on exit."""

    agent_id: str
    estimate_usd: Decimal
    idempotency_key: str
    fail_policy: str
    reservation_id: int | None = None
    remaining_usd: Decimal | None = None
    fail_open: bool = False
    actual_usd: Decimal | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    model: str = "unspecified"
    provider: str = "unspecified"
    metadata: dict[str, Any] = field(default_factory=dict)
    settlement: dict[str, Any] | None = None
    outcome: str = "open"

    def set_cost(
        self,
        actual_usd: Decimal | int,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        model: str = "unspecified",
        provider: str = "unspecified",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.actual_usd = money(actual_usd, "actual_usd")
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.model = model
        self.provider = provider
        self.metadata = dict(metadata or {})

    def cost_record(self, key: str, **extra_metadata: Any) -> CostRecord:
        assert self.actual_usd is not None
        return CostRecord(
            agent_id=self.agent_id,
            model=self.model,
            provider=self.provider,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=self.actual_usd,
            metadata={**self.metadata, **extra_metadata},
            idempotency_key=key,
        )
