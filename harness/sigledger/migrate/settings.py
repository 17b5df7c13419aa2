"""The runner's knobs (command-line options of `sigledger migrate` map onto these)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

OWNER_ROLE = "sigledger_owner"

Log = Callable[[str], None]


@dataclass
class Settings:
    # DDL waits at most this long for a table lock, then gives way and retries: the application's statements
    # queued behind the waiting DDL wait at most this long too (docs/deploying.md, Online)
    lock_timeout: str = "1s"
    statement_timeout: str = "30min"
    concurrent_lock_timeout: str = "10min"  # CREATE INDEX CONCURRENTLY waits out old transactions
    concurrent_statement_timeout: str = "0"
    retries: int = 10
    retry_base_delay: float = 0.5
    retry_max_delay: float = 10.0
    runner_wait: float = 600.0  # how long to wait for another runner holding the advisory lock
    allow_out_of_order: bool = False  # apply a pending file numbered below the newest applied one
    application_name: str = "sigledger-migrate"
    # make a group that applications may still log in as NOLOGIN anyway (the preflight refuses otherwise)
    retire_group_logins: bool = False
    # Called with "<label>:<statement index>" before each step of a no-transaction file (tests inject a pause
    # between two steps to interleave an application transaction at a known point).
    before_step: Callable[[str], None] | None = field(default=None, repr=False)
