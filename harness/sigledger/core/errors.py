"""One place that turns database errors into sigledger exceptions, by SQLSTATE (and constraint name).

Callers branch on the exception class (or ``.sqlstate``); the message is the server's, which names the bad
value. The custom codes are documented in docs/errors.md. A refusal that carries facts has them as fields
(``BudgetExceeded.remaining_usd``, ``.level``, ``.budget_id``, ``.period_start``), parsed from the DETAIL's
``key=value`` pairs; a privilege error (42501) becomes ``PermissionDenied`` whose hint names the role that may
call the function (from the audience list of sql/functions/900_grants.sql).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from decimal import Decimal, InvalidOperation
from typing import Any

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
    """SLB01: the reservation or cost does not fit in the budget.

    ``remaining_usd`` (what is left at the refusing level), ``level`` (agent, team, org), ``budget_id`` and
    ``period_start`` come from the DETAIL; a field the server did not send is None."""

    remaining_usd: Decimal | None = None
    level: str | None = None
    budget_id: int | None = None
    period_start: dt.datetime | None = None
    version: int | None = None

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        fields = detail_fields(self.detail)
        self.remaining_usd = _money(fields.get("remaining_usd"))
        self.level = fields.get("level")
        self.budget_id = _int(fields.get("budget_id"))
        self.version = _int(fields.get("version"))
        self.period_start = _timestamp(fields.get("period_start"))


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
    """The database could not be reached or cannot take the call now: connection failure, admin shutdown, a
    read-only server (25006), disk full, out of memory, too many connections (53xxx), I/O error (58xxx), internal
    error (XX000). Nothing about the data: the same call can succeed later. When sigledger tried to connect,
    ``host`` and ``port`` name where; the message names them and the cause."""

    def __init__(
        self, message: str, *, host: str | None = None, port: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.host = host
        self.port = port


class PermissionDenied(SigledgerError):
    """42501: the login lacks a privilege. ``hint`` names the role whose members may call the function (and is
    part of the message, which is what a log shows)."""

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (hint: {self.hint})" if self.hint else text


class JournalError(SigledgerError):
    """The CostTracker's local journal cannot be written: the record was not acknowledged (disk full, folder
    gone, permission). Records acknowledged earlier are kept."""


class MigrationError(SigledgerError):
    """The migration runner refused or failed; the message says which file and why."""


RETRYABLE_SQLSTATES: frozenset[str] = frozenset({"40001", "40P01", "55P03"})
# errors after which the session itself is the problem: the pool closes it rather than hand it out again
RECONNECT_SQLSTATES: frozenset[str] = frozenset({"25006"})

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
    "42501": PermissionDenied,
    # a server in trouble, not bad data: what was sent is kept and sent again later (docs/errors.md)
    "25006": Unavailable,  # read-only transaction: an old primary after a failover, a standby, a read-only db
    "25P03": Unavailable,  # idle-in-transaction timeout: the server ended the session
    "25P04": Unavailable,  # transaction timeout (PostgreSQL 17): the server ended the session
    "40003": Unavailable,  # statement completion unknown: the connection was lost during COMMIT
}
_BY_CLASS: dict[str, type[SigledgerError]] = {
    "08": Unavailable,
    "57": Unavailable,  # admin shutdown, cannot connect now
    "53": Unavailable,  # insufficient resources: disk full, out of memory, too many connections
    "58": Unavailable,  # system error: I/O error, undefined file
    "F0": Unavailable,  # configuration file error
    "XX": Unavailable,  # internal error, data or index corrupted
    "22": InvalidInput,
    "54": InvalidInput,  # program limit exceeded: a value too large or nested too deeply
}


def register(sqlstate: str, cls: type[SigledgerError]) -> None:
    """Map a further SQLSTATE (a module that defines its own codes calls this at import)."""
    _BY_SQLSTATE[sqlstate] = cls


# What a writer may drop into a dead-letter file: the database refused these values, and would refuse them again.
# Everything else (Unavailable, Retryable, PermissionDenied, an unmapped psycopg error) is about the server or the
# login, not the record: keep the record and send it again later.
DATA_ERRORS: tuple[type[SigledgerError], ...] = (InvalidInput, NotFound)


def primary_message(exc: BaseException) -> str:
    """The error's own message without the CONTEXT lines of every SQL statement it went through (a raw psycopg
    error's ``str()`` has them: kilobytes of function source)."""
    diag = getattr(exc, "diag", None)
    message = getattr(diag, "message_primary", None) if diag is not None else None
    if not message:
        message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        message = message.split("\nCONTEXT:", 1)[0]
    return message.strip()


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
    hint = diag.message_hint
    if cls is PermissionDenied:
        hint = privilege_hint(message) or hint
    return cls(
        message,
        sqlstate=sqlstate or None,
        detail=diag.message_detail,
        hint=hint,
        constraint=diag.constraint_name,
    )


def detail_fields(detail: str | None) -> dict[str, str]:
    """The ``key=value`` pairs of a DETAIL (``remaining_usd=0.2 budget_id=3 level=team period_start=...``)."""
    if not detail:
        return {}
    pairs = re.findall(r"(\w+)=(.*?)(?=\s+\w+=|$)", detail.strip())
    return {k: v.strip() for k, v in pairs}


def _money(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        from sigledger.core.money import normalize

        return normalize(Decimal(text))
    except InvalidOperation:
        return None


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _timestamp(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


_AUDIENCE_ENTRY = re.compile(r"\('(?P<fn>\w+)',\s*'\{(?P<roles>[\w,]+)\}'\)")


@functools.cache
def audiences() -> dict[str, tuple[str, ...]]:
    """Function name -> the roles that may execute it, from the audience list of 900_grants.sql."""
    from sigledger.core.paths import functions_dir

    try:
        text = (functions_dir() / "900_grants.sql").read_text()
    except FileNotFoundError:
        return {}
    return {
        m["fn"]: tuple(f"sigledger_{r}" for r in m["roles"].split(","))
        for m in _AUDIENCE_ENTRY.finditer(text)
    }


def privilege_hint(message: str) -> str | None:
    """What a 42501 means for sigledger: which role's members may call the function, or that tables are private."""
    found = re.search(r"permission denied for (function|procedure|table|view|schema|sequence) (\S+)", message)
    if found is None:
        return None
    kind, name = found.group(1), found.group(2).split(".")[-1].strip('"')
    if kind in ("function", "procedure"):
        roles = audiences().get(name)
        if not roles:
            return f"sigledger.{name} is internal: no application role may call it; use the API (docs/api.md)"
        group = roles[0].removeprefix("sigledger_")
        return (
            f"sigledger.{name} may be called by members of {' or '.join(roles)}: log in as such a member "
            f"(`sigledger role create-login <login> --as {group}`, or `sigledger role sql` for a DBA)"
        )
    if kind == "schema":
        return (
            "the login is not a member of any sigledger role (sigledger_app, sigledger_readonly, ...): "
            "`sigledger role create-login <login> --as app|readonly|admin|graph`"
        )
    return f"{kind}s are private: call the API functions (docs/api.md) or read the views"
