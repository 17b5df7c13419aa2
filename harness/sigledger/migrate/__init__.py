"""The migration runner: versioned files once and in order, repeatable files when they change."""

from sigledger.migrate.runner import (
    ADVISORY_LOCK_KEY,
    EXIT_DRIFT,
    EXIT_OK,
    EXIT_PENDING,
    Migrator,
    Settings,
    Status,
    status_json,
)

__all__ = [
    "ADVISORY_LOCK_KEY",
    "EXIT_DRIFT",
    "EXIT_OK",
    "EXIT_PENDING",
    "Migrator",
    "Settings",
    "Status",
    "status_json",
]
