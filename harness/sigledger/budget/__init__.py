"""Budgets: ``BudgetClient`` (the SQL API), ``BudgetGuard`` (reserve/settle around a call), ``Breaker``."""

from sigledger.budget.breaker import Breaker
from sigledger.budget.client import BudgetClient
from sigledger.budget.guard import BudgetGuard, Reservation

__all__ = ["Breaker", "BudgetClient", "BudgetGuard", "Reservation"]
