"""The cost ledger: ``Ledger`` / ``CostRecord`` (the SQL API) and ``CostTracker`` (the buffered writer)."""

from sigledger.ledger.client import BatchResult, CostRecord, Ledger
from sigledger.ledger.tracker import CostTracker

__all__ = ["BatchResult", "CostRecord", "CostTracker", "Ledger"]
