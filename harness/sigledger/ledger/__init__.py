"""The cost ledger: ``Ledger`` / ``CostRecord`` (the SQL API) and ``CostTracker`` (the journaled, batched writer);
and their asyncio twins ``AsyncLedger`` and ``AsyncCostTracker``."""

from sigledger.ledger.aclient import AsyncLedger
from sigledger.ledger.atracker import AsyncCostTracker
from sigledger.ledger.client import Ledger
from sigledger.ledger.records import BatchResult, CostRecord
from sigledger.ledger.tracker import CostTracker

__all__ = ["AsyncCostTracker", "AsyncLedger", "BatchResult", "CostRecord", "CostTracker", "Ledger"]
