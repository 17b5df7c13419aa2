"""Budget alerts as they happen: the watcher behind `sigledger budget watch` and its webhook delivery.

The NOTIFY on ``sigledger_budget_alert`` is a wake-up carrying ``{"alert_id": N}``; any role may NOTIFY on
that channel, so the payload is never trusted: the watcher reads the alert through the API
(``budget_alert_document``), warns about what it cannot parse or find, and goes on.

Webhook mode delivers at least once: the sink's pending alerts come from the database (``alert_sink_pending``:
by id, so an alert whose transaction commits late is not skipped), each is POSTed with retries and backoff,
and only an acknowledged (2xx) delivery is recorded (``alert_sink_delivered``). A crash between the POST and
the record means one more POST after the restart, never a lost alert; receivers dedupe on ``alert_id``.

Webhook mode also fires the alerts that sliced budgets missed (``fire_missed_alerts``: two concurrent charges on
two slices that reach a threshold together each miss the other's), when it starts and then every
``fire_missed_every`` seconds, so that a deployment running the watcher without a sweep or pg_cron still gets
them. That function takes no spend-row lock and fires each alert once (the alert's unique key), so running it
beside a sweep is harmless.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from sigledger.core.db import connect

CHANNEL = "sigledger_budget_alert"
MAX_ALERT_ID = 2**63 - 1
Document = dict[str, Any]
Warn = Callable[[str], None]


def parse_payload(payload: str, warn: Warn) -> int | None:
    """The alert id a NOTIFY payload names, or None (with a warning) when it names none."""
    shown = payload if len(payload) <= 200 else payload[:200] + "..."
    try:
        data = json.loads(payload)
    except ValueError:
        warn(f"ignored a notification that is not json: {shown!r}")
        return None
    alert_id = data.get("alert_id") if isinstance(data, dict) else None
    if isinstance(alert_id, bool) or not isinstance(alert_id, int):
        warn(f"ignored a notification without an integer alert_id: {shown!r}")
        return None
    if not 1 <= alert_id <= MAX_ALERT_ID:  # ids are bigint: beyond, the database would raise 22003
        warn(f"ignored a notification whose alert_id is not in 1..{MAX_ALERT_ID}: {shown!r}")
        return None
    return alert_id


def sink_name(url: str) -> str:
    """The default sink name of a webhook: its URL without credentials, query or fragment (they may hold
    secrets, and the name is stored and shown in metrics)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"webhook:{parts.scheme}://{netloc}{parts.path}"


class DeliveryFailed(Exception):
    """The receiver did not acknowledge the alert after every retry of this round."""


@dataclass
class Webhook:
    """POSTs an alert document as JSON; 2xx is an acknowledgement, anything else is retried with exponential
    backoff and jitter, at most `retries` times per call."""

    url: str
    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float = 10.0

    def deliver(self, document: Document, warn: Warn) -> int:
        """POST until acknowledged; returns the number of attempts. DeliveryFailed after the last retry."""
        body = json.dumps(document).encode()
        alert_id = str(document.get("alert_id"))
        last = ""
        for attempt in range(1, self.retries + 2):
            request = urllib.request.Request(
                self.url,
                data=body,
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "sigledger-budget-watch",
                    "X-Sigledger-Alert-Id": alert_id,
                    "Idempotency-Key": f"sigledger-alert-{alert_id}",
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    if 200 <= response.status < 300:
                        return attempt
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:  # refused, reset, timeout, bad URL
                last = f"{type(exc).__name__}: {exc}"
            if attempt <= self.retries:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                warn(
                    f"alert {alert_id}: delivery attempt {attempt} failed ({last}); retrying in {delay:.2f}s"
                )
                time.sleep(delay)
        raise DeliveryFailed(f"alert {alert_id}: not acknowledged after {self.retries + 1} attempts ({last})")


class Watcher:
    """LISTENs for alerts on one connection and reads them through the API on the same connection."""

    def __init__(self, dsn: str, warn: Warn, *, application_name: str = "sigledger-watch") -> None:
        self.warn = warn
        self.conn = connect(dsn, application_name=application_name, autocommit=True)
        self.conn.execute(f"LISTEN {CHANNEL}")

    def close(self) -> None:
        self.conn.close()

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def document(self, alert_id: int) -> Document | None:
        rows = self._rows("SELECT sigledger.budget_alert_document(p_alert_id => %s::bigint)", (alert_id,))
        return rows[0][0] if rows and rows[0][0] is not None else None

    def notified(self, alert_id: int) -> Document | None:
        """The document of a notified alert, or None with a warning (it does not exist, or reading it failed:
        one bad notification never stops the watcher; a lost connection still does)."""
        try:
            document = self.document(alert_id)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except psycopg.DatabaseError as exc:
            self.warn(f"ignored a notification naming alert {alert_id}: [{exc.sqlstate}] {exc}")
            return None
        if document is None:
            self.warn(f"ignored a notification naming alert {alert_id}, which does not exist")
        return document

    def fire_missed(self) -> int | None:
        """Fire the alerts sliced budgets missed; how many, or None with a warning when the call failed (an alert
        row another transaction holds past the function's lock_timeout: 55P03; a statement timeout): the next
        round tries again. A lost connection still stops the watcher."""
        try:
            return int(self._rows("SELECT sigledger.fire_missed_alerts()", ())[0][0])
        except psycopg.Error as exc:
            if self.conn.broken or self.conn.closed:
                raise
            self.warn(f"missed alerts not fired this round: [{exc.sqlstate}] {exc}")
            return None

    def wait(self, timeout: float) -> list[int]:
        """Alert ids notified within timeout seconds (forged and malformed payloads warned about, dropped)."""
        ids = []
        for note in self.conn.notifies(timeout=timeout, stop_after=1):
            alert_id = parse_payload(note.payload, self.warn)
            if alert_id is not None:
                ids.append(alert_id)
        return ids

    def print_alerts(
        self, emit: Callable[[Document], None], *, replay_after: int | None, count: int | None
    ) -> int:
        """Emit stored alerts after replay_after (None: none), then each alert as it is notified, until count."""
        seen: set[int] = set()
        emitted = 0
        # the high-water: a notification naming an alert stored before now is not news (it is forged, or a
        # replay's business), so only ids above it are printed. An alert whose id was drawn before a newer one
        # committed but which itself commits after this read is below it and not printed: print mode is "from
        # now" at best effort; the webhook mode (pending read by id from the database) is the at-least-once path
        high_water = int(self._rows("SELECT sigledger.budget_alert_last_id()", ())[0][0])
        if replay_after is not None:
            after = replay_after
            while True:
                page = self._rows(
                    "SELECT alert_id, document FROM sigledger.budget_alert_feed(p_after_id => %s::bigint,"
                    " p_limit => 1000)",
                    (after,),
                )
                for alert_id, document in page:
                    emit(document)
                    seen.add(alert_id)
                    after = alert_id
                    emitted += 1
                    if count is not None and emitted >= count:
                        return emitted
                if len(page) < 1000:
                    break
        while count is None or emitted < count:
            for alert_id in self.wait(1.0):
                if alert_id in seen:
                    continue
                if alert_id <= high_water:
                    self.warn(
                        f"ignored a notification naming alert {alert_id}, stored before the watcher started"
                    )
                    continue
                document = self.notified(alert_id)
                if document is None:
                    continue
                seen.add(alert_id)
                if len(seen) > 100_000:  # bounded memory on a long run: forget the oldest ids
                    seen = set(sorted(seen)[-50_000:])
                emit(document)
                emitted += 1
                if count is not None and emitted >= count:
                    break
        return emitted

    def deliver_alerts(
        self,
        webhook: Webhook,
        sink: str,
        emit: Callable[[Document], None],
        *,
        replay: bool,
        count: int | None,
        poll: float = 5.0,
        announce: Callable[[str], None] | None = None,
        fire_missed_every: float | None = 60.0,
    ) -> int:
        """Deliver the sink's pending alerts, then each new one, until count (None: forever). Every
        fire_missed_every seconds (the first time at once; None: never) the alerts sliced budgets missed are
        fired first, and so delivered in that round."""
        opened = self._rows(
            "SELECT pending FROM sigledger.alert_sink_open(p_sink => %s::text, p_replay => %s::boolean)",
            (sink, replay),
        )
        if announce is not None:
            announce(f"sink {sink}: {opened[0][0]} alert(s) pending")
        delivered = 0
        pause = 0.0
        fire_at = time.monotonic()
        while count is None or delivered < count:
            if fire_missed_every is not None and time.monotonic() >= fire_at:
                self.fire_missed()
                fire_at = time.monotonic() + fire_missed_every
            pending = self._rows(
                "SELECT alert_id, document FROM sigledger.alert_sink_pending(p_sink => %s::text, p_limit => 100)",
                (sink,),
            )
            failed = False
            for alert_id, document in pending:
                try:
                    attempts = webhook.deliver(document, self.warn)
                except DeliveryFailed as exc:
                    self.warn(f"{exc}; next round in {max(pause, webhook.backoff):.2f}s")
                    failed = True
                    break
                self._rows(
                    "SELECT sigledger.alert_sink_delivered(p_sink => %s::text, p_alert_id => %s::bigint,"
                    " p_attempts => %s::integer)",
                    (sink, alert_id, attempts),
                )
                emit(document)
                delivered += 1
                if count is not None and delivered >= count:
                    return delivered
            if failed:
                # the receiver is down: wait longer each round (bounded), then try the oldest pending again
                pause = min(webhook.max_backoff, max(webhook.backoff, pause * 2))
                time.sleep(pause)
                continue
            pause = 0.0
            if len(pending) < 100:
                timeout = poll
                if fire_missed_every is not None:  # (woken in time for the next round of missed alerts)
                    timeout = max(0.01, min(poll, fire_at - time.monotonic()))
                for alert_id in self.wait(timeout):  # a wake-up; pending is read from the database anyway
                    self.notified(alert_id)
        return delivered
