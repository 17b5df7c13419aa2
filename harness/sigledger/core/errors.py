"""One place that turns database errors into sigledger exceptions, by SQLSTATE (and constraint name).

Callers branch on the exception class (or ``.sqlstate``); the message is the server's, which names the bad
value. The custom codes are documented in docs/errors.md.
"""

from __future__ import annotations

import psycopg


class SigledgerError(Exception):
    """Base of every error sigledger raises on purpose."""

    sqlstate: str | None = None

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
        constraint: str | None = None,
    ) -> None:
        super().__init__(message)
        if sqlstate is not None:
            self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint
        self.constraint = constraint


class InvalidInput(SigledgerError):
    """A value was rejected by validation (22xxx, 23514 check violation, SLM02 invalid merge input)."""


class NotFound(SigledgerError):
    """An id that does not exist (P0002, 23503)."""


class Conflict(SigledgerError):
    """A state conflict the caller must resolve (unique violation, already settled, already merged)."""


class BudgetExceeded(Conflict):
    """SLB01: the reservation or cost does not fit in the budget; ``detail`` gives what remains."""


class ReservationExpired(Conflict):
    """SLB02: the reservation passed its TTL and was released."""


class ReservationClosed(Conflict):
    """SLB03: the reservation was already settled or released differently."""


class BudgetUnavailable(SigledgerError):
    """SLB04: the database is unreachable and the budget's policy is fail-closed."""


class VersionConflict(Conflict):
    """SLV01: expected_version does not match the row's version; re-read and retry."""


class MergeConflict(Conflict):
    """SLM01: an opportunity or entity was already merged; the message names its tombstone."""


class GraphError(SigledgerError):
    """SLG01: the Neo4j projection failed."""


class Retryable(SigledgerError):
    """Serialization failure, deadlock, lock timeout: safe to retry when the call is idempotent."""


class Unavailable(SigledgerError):
    """The database could not be reached (connection failure, admin shutdown)."""


class MigrationError(SigledgerError):
    """The migration runner refused or failed; the message says which file and why."""


RETRYABLE_SQLSTATES: frozenset[str] = frozenset({"40001", "40P01", "55P03"})

_BY_SQLSTATE: dict[str, type[SigledgerError]] = {
    "SLB01": BudgetExceeded,
    "SLB02": ReservationExpired,
    "SLB03": ReservationClosed,
    "SLB04": BudgetUnavailable,
    "SLV01": VersionConflict,
    "SLM01": MergeConflict,
    "SLM02": InvalidInput,
    "SLG01": GraphError,
    "P0002": NotFound,
    "23503": NotFound,
    "23505": Conflict,
    "23514": InvalidInput,
    "23502": InvalidInput,
    "22023": InvalidInput,
    "22003": InvalidInput,
    "22P02": InvalidInput,
    "22007": InvalidInput,
    "22008": InvalidInput,
    "22001": InvalidInput,
    "22004": InvalidInput,
}
_BY_CLASS: dict[str, type[SigledgerError]] = {
    "08": Unavailable,
    "57": Unavailable,  # admin shutdown, cannot connect now
    "22": InvalidInput,
    "54": InvalidInput,  # program limit exceeded: a value too large or nested too deeply
}


def register(sqlstate: str, cls: type[SigledgerError]) -> None:
    """Map a further SQLSTATE (a module that defines its own codes calls this at import)."""
    _BY_SQLSTATE[sqlstate] = cls


def translate(exc: BaseException) -> BaseException:
    """Return the sigledger exception for a psycopg error (or ``exc`` itself when it is not one)."""
    if isinstance(exc, SigledgerError):
        return exc
    if isinstance(exc, psycopg.OperationalError) and not getattr(exc, "sqlstate", None):
        return Unavailable(str(exc).strip() or "database unavailable")
    if not isinstance(exc, psycopg.Error):
        return exc
    sqlstate = exc.sqlstate or ""
    diag = exc.diag
    cls: type[SigledgerError] | None
    if sqlstate in RETRYABLE_SQLSTATES:
        cls = Retryable
    else:
        cls = _BY_SQLSTATE.get(sqlstate) or _BY_CLASS.get(sqlstate[:2])
    if cls is None:
        return exc
    message = diag.message_primary or str(exc).strip()
    return cls(
        message,
        sqlstate=sqlstate or None,
        detail=diag.message_detail,
        hint=diag.message_hint,
        constraint=diag.constraint_name,
    )
