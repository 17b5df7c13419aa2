"""A circuit breaker around database calls (pybreaker), counting only outages.

Closed: calls go through. After ``fail_max`` consecutive outages (sigledger.core.errors.Unavailable: the database
could not be reached) it opens and fails fast for ``reset_timeout`` seconds; then half-open lets calls try,
and ``success_threshold`` successes close it again (one failure reopens it). Business errors (budget
exceeded, invalid input, version conflict, lock timeouts) prove the database is up: they never count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import pybreaker

from sigledger.core import metrics
from sigledger.core.errors import Unavailable

log = logging.getLogger("sigledger.breaker")

T = TypeVar("T")

CLOSED = pybreaker.STATE_CLOSED
OPEN = pybreaker.STATE_OPEN
HALF_OPEN = pybreaker.STATE_HALF_OPEN


class BreakerOpen(Unavailable):
    """The breaker is open: the call was not attempted."""


class _LogListener(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        log.warning("breaker %s: %s -> %s", cb.name, getattr(old_state, "name", old_state), new_state.name)
        metrics.breaker_changed(str(cb.name), str(new_state.name))


class Breaker:
    def __init__(
        self,
        *,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        success_threshold: int = 2,
        name: str = "sigledger-db",
    ) -> None:
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            success_threshold=success_threshold,
            # only outages open the circuit; every other exception means the database answered
            exclude=[lambda exc: not isinstance(exc, Unavailable)],
            listeners=[_LogListener()],
            name=name,
            throw_new_error_on_trip=False,
        )
        metrics.BREAKER_STATE.labels(breaker=name).set(0)

    @property
    def state(self) -> str:
        return str(self._cb.current_state)

    @property
    def fail_counter(self) -> int:
        return int(self._cb.fail_counter)

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return self._cb.call(func, *args, **kwargs)
        except pybreaker.CircuitBreakerError as exc:
            raise BreakerOpen(f"circuit breaker {self._cb.name} is open: {exc}") from exc
