"""sigledger harness: the thin Python around the PostgreSQL core.

Python does what SQL cannot: own connections, run migrations, buffer and flush costs, wrap budget calls in a
circuit breaker, talk to Neo4j, and offer a CLI. Everything else lives in ``sql/``.
"""

__version__ = "0.1.0"
