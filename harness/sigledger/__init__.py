"""sigledger: the hardened PostgreSQL core of an AI-agent pipeline, and its thin Python library.

Python does what SQL cannot: own connections, run migrations, buffer and flush costs, wrap budget calls in a
circuit breaker, talk to Neo4j, and offer a CLI. Everything else lives in the SQL the package ships.

The package is arranged by domain: ``core`` (connections, errors, paths, local cluster, metrics),
``migrate``, ``ledger``, ``budget``, ``ingest``, ``graph``, ``cli``, ``demo``.
"""

__version__ = "0.1.0"

from sigledger.budget import AsyncBudgetClient, AsyncBudgetGuard, BudgetClient, BudgetGuard, Reservation
from sigledger.core.adb import AsyncDatabase
from sigledger.core.db import Database
from sigledger.core.errors import (
    BudgetExceeded,
    BudgetUnavailable,
    InvalidInput,
    JournalError,
    NotFound,
    PermissionDenied,
    SigledgerError,
    Unavailable,
)
from sigledger.ledger import AsyncCostTracker, AsyncLedger, CostRecord, CostTracker, Ledger

__all__ = [
    "AsyncBudgetClient",
    "AsyncBudgetGuard",
    "AsyncCostTracker",
    "AsyncDatabase",
    "AsyncLedger",
    "BudgetClient",
    "BudgetExceeded",
    "BudgetGuard",
    "BudgetUnavailable",
    "CostRecord",
    "CostTracker",
    "Database",
    "InvalidInput",
    "JournalError",
    "Ledger",
    "NotFound",
    "PermissionDenied",
    "Reservation",
    "SigledgerError",
    "Unavailable",
    "__version__",
]
