"""sigledger: the hardened PostgreSQL core of an AI-agent pipeline, and its thin Python library.

Python does what SQL cannot: own connections, run migrations, buffer and flush costs, wrap budget calls in a
circuit breaker, talk to Neo4j, and offer a CLI. Everything else lives in the SQL the package ships.

The package is arranged by domain: ``core`` (connections, errors, paths, local cluster, metrics),
``migrate``, ``ledger``, ``budget``, ``ingest``, ``graph``, ``cli``, ``demo``.
"""

__version__ = "0.1.0"

from sigledger.budget import BudgetClient, BudgetGuard, Reservation
from sigledger.core.db import Database
from sigledger.ledger import CostRecord, CostTracker, Ledger

__all__ = [
    "BudgetClient",
    "BudgetGuard",
    "CostRecord",
    "CostTracker",
    "Database",
    "Ledger",
    "Reservation",
    "__version__",
]
