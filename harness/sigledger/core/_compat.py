"""The thread-based twins of sigledger.core._acompat, used by the generated sync modules."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

T = TypeVar("T")

ASYNC: Final = False

Lock = threading.Lock
Event = threading.Event
Condition = threading.Condition  # on an RLock: a SIGTERM handler may run while the main thread holds it
Worker = threading.Thread


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def to_thread(func: Callable[..., T], *args: Any) -> T:
    return func(*args)


def spawn(func: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=func, name=name, daemon=True)
    thread.start()
    return thread


def join(worker: threading.Thread) -> None:
    worker.join()


def is_current(worker: threading.Thread | None) -> bool:
    return worker is not None and worker is threading.current_thread()


def wait_condition(cond: threading.Condition, timeout: float) -> bool:
    return cond.wait(timeout)


def wait_event(event: threading.Event, timeout: float) -> bool:
    return event.wait(timeout)
