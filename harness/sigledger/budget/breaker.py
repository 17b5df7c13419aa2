"""A circuit breaker around database calls, counting only outages; shared by the sync and the async guard.

Closed: calls go through. After ``fail_max`` consecutive outages (sigledger.core.errors.Unavailable: the database
could not be reached) it opens and fails fast for ``reset_timeout`` seconds; then half-open lets calls try, and
``success_threshold`` successes close it again (one outage reopens it). Business errors (budget exceeded,
invalid input, version conflict, lock timeouts) prove the database is up: they count as successes.

The breaker only counts outcomes: ``before()`` decides whether a call may start, ``succeeded()``/``failed()``
record how it ended. Its lock guards those few field updates and is never held across the call itself (pybreaker
held its lock for the whole call, so N threads through one guard ran one at a time: issue 14). In half-open
every caller may try (not one trial at a time), so the window of fail-fast refusals ends with the reset timeout
once the server is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sigledger.core import metrics
from sigledger.core.errors import Unavailable

log = logging.getLogger("sigledger.breaker")

T = TypeVar("T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"
_GAUGE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class BreakerOpen(Unavailable):
    """The breaker is open: the call was not attempted."""


class Breaker:
    def __init__(
        self,
        *,
        fail_max: int = 5,
        reset_timeout: float = 1.0,
        success_threshold: int = 1,
        name: str = "sigledger-db",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fail_max < 1 or success_threshold < 1 or reset_timeout < 0:
            raise ValueError("fail_max and success_threshold must be >= 1, reset_timeout >= 0")
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self.success_threshold = success_threshold
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below; never held across a call
        self._state = CLOSED
        self._failures = 0
        self._successes = 0
        self._opened_at = 0.0
        metrics.BREAKER_STATE.labels(breaker=name).set(0)

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.reset_timeout:
                return HALF_OPEN  # what the next call will find
            return self._state

    @property
    def fail_counter(self) -> int:
        return self._failures

    def _enter(self, state: str) -> None:  # with self._lock held
        old, self._state = self._state, state
        if state == OPEN:
            self._opened_at = self._clock()
        self._successes = 0
        if state == CLOSED:
            self._failures = 0
        log.warning("breaker %s: %s -> %s", self.name, old, state)
        metrics.breaker_changed(self.name, state)

    def before(self) -> None:
        """Raise BreakerOpen when the call must not be attempted; otherwise let it start."""
        with self._lock:
            if self._state != OPEN:
                return
            if self._clock() - self._opened_at < self.reset_timeout:
                raise BreakerOpen(f"circuit breaker {self.name} is open: the database was unreachable")
            self._enter(HALF_OPEN)

    def succeeded(self) -> None:
        with self._lock:
            if self._state == HALF_OPEN:
                self._successes += 1
                if self._successes >= self.success_threshold:
                    self._enter(CLOSED)
            elif self._state == CLOSED:
                self._failures = 0

    def failed(self) -> None:
        with self._lock:
            if self._state == HALF_OPEN:
                self._enter(OPEN)
            elif self._state == CLOSED:
                self._failures += 1
                if self._failures >= self.fail_max:
                    self._enter(OPEN)
            # OPEN: a call that started before the breaker opened and failed later changes nothing

    def record(self, exc: BaseException | None) -> None:
        """Count how a call ended: an outage, or anything else (the database answered, or the caller's bug)."""
        if isinstance(exc, Unavailable) and not isinstance(exc, BreakerOpen):
            self.failed()
        elif exc is None or isinstance(exc, Exception):
            self.succeeded()

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.before()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self.record(exc)
            raise
        self.record(None)
        return result
