"""The runner's knobs (command-line options of `sigledger migrate` map onto these)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

OWNER_ROLE = "sigledger_owner"

Log = Callable[[str], None]


@dataclass
class Settings:
    lock_timeout: str = "5s"  # DDL waits at most this long for a table lock, then retries
    statement_timeout: str = "30min"
    concurrent_lock_timeout: str = "10min"  # CREATE INDEX CONCURRENTLY waits out old transactions
    concurrent_statement_timeout: str = "0"
    retries: int = 5
    retry_base_delay: float = 0.5
    runner_wait: float = 600.0  # how long to wait for another runner holding the advisory lock
    allow_out_of_order: bool = False  # apply a pending file numbered below the newest applied one
    application_name: str = "sigledger-migrate"
