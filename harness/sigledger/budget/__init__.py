"""Budgets: ``BudgetClient`` (the SQL API), ``BudgetGuard`` (reserve/settle around a call), ``Breaker``; and their
asyncio twins ``AsyncBudgetClient`` and ``AsyncBudgetGuard`` (the sync modules are generated from the async ones)."""

from sigledger.budget.aclient import AsyncBudgetClient
from sigledger.budget.aguard import AsyncBudgetGuard
from sigledger.budget.breaker import Breaker
from sigledger.budget.client import BudgetClient
from sigledger.budget.guard import BudgetGuard
from sigledger.budget.reservation import Reservation

__all__ = ["AsyncBudgetClient", "AsyncBudgetGuard", "Breaker", "BudgetClient", "BudgetGuard", "Reservation"]
