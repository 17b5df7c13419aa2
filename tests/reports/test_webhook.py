"""`budget watch --webhook`: every alert reaches a receiver that fails now and then (HTTP 500/503, dropped
connections), at least once, with retries and backoff; what was delivered is remembered in the database, so a
watcher killed mid-way and restarted delivers what is pending and not what it already delivered."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.reports.helpers import LineProcess, record, run, sigledger


@dataclass
class Receiver:
    """A loopback HTTP server that answers POSTs by a repeating pattern: ok, 500, drop (close the connection
    without an answer), 503; or fails everything while `down`."""

    pattern: list[str] = field(default_factory=lambda: ["500", "ok", "drop", "503", "ok", "ok"])
    down: bool = False
    log: list[tuple[int, str]] = field(default_factory=list)  # (alert id, outcome)
    bodies: dict[int, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def outcome(self) -> str:
        with self.lock:
            if self.down:
                return "500"
            return self.pattern[len(self.log) % len(self.pattern)]

    def acked(self) -> dict[int, int]:
        with self.lock:
            out: dict[int, int] = {}
            for alert_id, what in self.log:
                if what == "ok":
                    out[alert_id] = out.get(alert_id, 0) + 1
            return out

    def attempts(self, alert_id: int) -> int:
        with self.lock:
            return sum(1 for a, _ in self.log if a == alert_id)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            what = state.outcome()
            with state.lock:
                state.log.append((int(body["alert_id"]), what))
                if what == "ok":
                    state.bodies[int(body["alert_id"])] = body
            if what == "drop":
                self.close_connection = True
                self.connection.close()
                return
            self.send_response(200 if what == "ok" else int(what))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/hooks/budget?token=secret"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _agents(dsn: str, *names: str) -> None:
    for name in names:
        assert (
            run(dsn, "agent", "create", name, "--limit", "1", "--alert", "0.5", "--alert", "1.0").exit_code
            == 0
        )


def _watch(dsn: str, url: str, *args: str) -> LineProcess:
    proc = LineProcess(
        sigledger(
            "budget", "watch", "--dsn", dsn, "--webhook", url, "--backoff", "0.02", "--timeout", "5", *args
        )
    )
    proc.wait_err("alert(s) pending", timeout=60)  # the sink is open: alerts from here on are its business
    return proc


def _deliveries(dsn: str) -> dict[int, int]:
    with psycopg.connect(dsn) as c:
        return dict(c.execute("SELECT alert_id, attempts FROM sigledger.alert_delivery").fetchall())


def _wait(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_every_alert_reaches_a_flaky_receiver(db_dsn: str, receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    _agents(db_dsn, "wh-a", "wh-b")
    watcher = _watch(db_dsn, url, "--count", "4")
    try:
        for agent in ("wh-a", "wh-b"):
            record(db_dsn, agent, "0.6", f"{agent}-1")  # crosses 0.5
            record(db_dsn, agent, "0.5", f"{agent}-2")  # crosses 1.0
        printed = [json.loads(watcher.line()) for _ in range(4)]
        assert watcher.wait(timeout=60) == 0, watcher.drain_err()
    finally:
        watcher.stop()
    with psycopg.connect(db_dsn) as c:
        ids = [r[0] for r in c.execute("SELECT id FROM sigledger.budget_alert ORDER BY id").fetchall()]
        documents = {
            r[0]: r[1]
            for r in c.execute("SELECT alert_id, document FROM sigledger.budget_alert_feed()").fetchall()
        }
    assert len(ids) == 4
    assert set(state.acked()) == set(ids)  # each acknowledged at least once
    assert any(what != "ok" for _, what in state.log)  # and the receiver did fail on the way
    assert set(_deliveries(db_dsn)) == set(ids)
    assert max(_deliveries(db_dsn).values()) > 1  # some took retries, and that is recorded
    assert state.bodies == documents  # the webhook body is the API's document
    assert sorted(p["alert_id"] for p in printed) == ids
    assert "secret" not in " ".join(watcher.drain_err())  # the sink name leaves the query (a token) out


def test_a_killed_watcher_delivers_what_is_pending_after_a_restart(
    db_dsn: str, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    _agents(db_dsn, "wh-r")
    state.down = True
    first = _watch(db_dsn, url, "--retries", "1")
    try:
        record(db_dsn, "wh-r", "0.6", "wh-r-1")  # alert 1, while the receiver is down
        with psycopg.connect(db_dsn) as c:
            alert_1 = c.execute("SELECT max(id) FROM sigledger.budget_alert").fetchone()[0]  # type: ignore[index]
        _wait(lambda: state.attempts(alert_1) >= 2, "two failed attempts")
    finally:
        first.stop()  # SIGKILL, mid-way through its retries
    assert _deliveries(db_dsn) == {}
    record(db_dsn, "wh-r", "0.5", "wh-r-2")  # alert 2, while no watcher runs
    state.down = False
    state.pattern = ["ok"]
    second = _watch(db_dsn, url, "--count", "2")
    try:
        assert second.wait(timeout=60) == 0, second.drain_err()
    finally:
        second.stop()
    delivered = _deliveries(db_dsn)
    assert len(delivered) == 2 and alert_1 in delivered
    assert set(state.acked()) == set(delivered)
    # a third start delivers only what is new: the database remembers the first two
    third = _watch(db_dsn, url, "--count", "1")
    try:
        run(db_dsn, "agent", "set-budget", "wh-r", "--alert", "1.15")
        record(db_dsn, "wh-r", "0.1", "wh-r-3")  # 1.1 -> 1.2 crosses 1.15
        assert third.wait(timeout=60) == 0, third.drain_err()
    finally:
        third.stop()
    acked = state.acked()
    assert len(acked) == 3 and all(n == 1 for n in acked.values()), acked


def test_a_forged_out_of_range_id_does_not_stop_delivery(db_dsn: str, receiver: tuple[Receiver, str]) -> None:
    """Issue 11.5: `{"alert_id": 99999999999999999999999}` made the webhook watcher exit 1 with 22003."""
    state, url = receiver
    _agents(db_dsn, "wh-forged")
    watcher = _watch(db_dsn, url, "--count", "1")
    try:
        with psycopg.connect(db_dsn, autocommit=True) as c:
            c.execute(
                """SELECT pg_notify('sigledger_budget_alert', '{"alert_id": 99999999999999999999999}')"""
            )
        record(db_dsn, "wh-forged", "0.6", "wh-forged-1")
        printed = json.loads(watcher.line())
        assert watcher.wait(timeout=60) == 0, watcher.drain_err()
    finally:
        watcher.stop()
    assert set(_deliveries(db_dsn)) == {printed["alert_id"]} and printed["alert_id"] in state.acked()
    assert "Traceback" not in " ".join(watcher.drain_err())


def _sliced_agent(dsn: str, name: str) -> str:
    """An agent with a $1.00 budget split over 2 slices ($0.50 each), alerts at 50% and 80% (the period's rows
    exist before the split, so its charges take the sliced statement: isolation spec budget_slices_alert_race)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        agent = str(
            c.execute(
                "SELECT sigledger.create_agent(%s, 1.00, p_alert_thresholds => ARRAY[0.5, 0.8])", (name,)
            ).fetchone()[0]  # type: ignore[index]
        )
        c.execute("SELECT allowed FROM sigledger.check_and_record_budget(%s, 0)", (agent,))
        c.execute(
            "SELECT sigledger.set_budget_slices((SELECT id FROM sigledger.budget WHERE agent_id = %s), 2)",
            (agent,),
        )
    return agent


def _charge_together(dsn: str, agent: str, cost: str) -> list[Decimal]:
    """Two charges of cost, one on each slice (random() seeded: 0.6 takes slice 0, 0.1 slice 1), both open
    before either commits: each sees its own slice as its update left it and the other as committed. Returns
    the slices' spend."""
    with (
        psycopg.connect(dsn, autocommit=True) as s1,
        psycopg.connect(dsn, autocommit=True) as s2,
    ):
        for session, seed in ((s1, 0.6), (s2, 0.1)):
            session.execute("SELECT setseed(%s)", (seed,))
            session.execute("BEGIN")
        for session in (s1, s2):
            allowed = session.execute(
                "SELECT allowed FROM sigledger.check_and_record_budget(%s, %s::numeric)",
                (agent, Decimal(cost)),
            ).fetchone()
            assert allowed == (True,)
        for session in (s1, s2):
            session.execute("COMMIT")
        return [
            r[0]
            for r in s1.execute(
                "SELECT s.spent_usd FROM sigledger.budget_spend s JOIN sigledger.budget b ON b.id = s.budget_id"
                " WHERE b.agent_id = %s ORDER BY s.slice",
                (agent,),
            ).fetchall()
        ]


def _thresholds(dsn: str, agent: str) -> list[Decimal]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return [
            r[0]
            for r in c.execute(
                "SELECT a.threshold FROM sigledger.budget_alert a JOIN sigledger.budget b ON b.id = a.budget_id"
                " WHERE b.agent_id = %s ORDER BY a.id",
                (agent,),
            ).fetchall()
        ]


def test_an_alert_two_slices_reached_together_is_delivered_by_the_watcher(
    db_dsn: str, admin_dsn: str, receiver: tuple[Receiver, str]
) -> None:
    """Two concurrent charges on two slices of a budget that reach a threshold together each miss the other's
    charge, so neither fires the alert (docs/budgets.md, Slices); fire_missed_alerts fires it from the committed
    sums. The watcher runs it: when it starts (a miss while no watcher ran) and every --fire-missed-every
    seconds (default 60), so a deployment that runs the watcher but no sweep or pg_cron gets the alert. Before,
    only `budget sweep` ran it: the watcher never delivered such an alert."""
    state, url = receiver
    state.pattern = ["ok"]
    agent = _sliced_agent(db_dsn, "wh-slices")
    # 0.30 + 0.30 reaches 50% and neither charge fires it
    assert _charge_together(db_dsn, agent, "0.30") == [Decimal("0.30"), Decimal("0.30")]
    assert _thresholds(db_dsn, agent) == []
    # the watcher (a login in sigledger_admin, as operations.md says) with its defaults: the missed alert on start
    first = _watch(admin_dsn, url, "--count", "1")
    try:
        delivered = json.loads(first.line())
        assert first.wait(timeout=60) == 0, first.drain_err()
    finally:
        first.stop()
    assert (delivered["agent"], delivered["threshold"]) == ("wh-slices", "0.5")
    # a miss while a watcher runs: delivered at its next round of fire_missed_alerts
    second = _watch(admin_dsn, url, "--count", "1", "--fire-missed-every", "0.5")
    try:
        # 0.45 + 0.45 reaches 80%: each charge sees 0.75
        assert _charge_together(db_dsn, agent, "0.15") == [Decimal("0.45"), Decimal("0.45")]
        delivered = json.loads(second.line())
        assert second.wait(timeout=60) == 0, second.drain_err()
    finally:
        second.stop()
    assert (delivered["agent"], delivered["threshold"]) == ("wh-slices", "0.8")
    # each alert fired once (its unique key), delivered once
    assert _thresholds(db_dsn, agent) == [Decimal("0.5"), Decimal("0.8")]
    assert sorted(state.acked().values()) == [1, 1]
    assert set(state.acked()) == set(_deliveries(db_dsn))


def test_a_missed_alert_held_by_an_open_charge_does_not_stop_the_watcher(
    db_dsn: str, admin_dsn: str, receiver: tuple[Receiver, str]
) -> None:
    """A charge that fires the missed alert in a transaction still open holds the alert's unique key: the
    watcher's fire_missed_alerts waits for it at most its lock_timeout (5 s), then 55P03. The watcher says so and
    goes on, and delivers the alert once that charge commits."""
    state, url = receiver
    state.pattern = ["ok"]
    agent = _sliced_agent(db_dsn, "wh-slices-busy")
    assert _charge_together(db_dsn, agent, "0.30") == [Decimal("0.30"), Decimal("0.30")]
    with psycopg.connect(db_dsn, autocommit=True) as charge:
        charge.execute("BEGIN")
        charge.execute("SELECT allowed FROM sigledger.check_and_record_budget(%s, 0.01)", (agent,))
        watcher = _watch(admin_dsn, url, "--count", "1")
        try:
            warning = watcher.wait_err("missed alerts not fired", timeout=60)
            assert "55P03" in warning, warning
            charge.execute("COMMIT")
            delivered = json.loads(watcher.line())
            assert watcher.wait(timeout=60) == 0, watcher.drain_err()
        finally:
            watcher.stop()
    assert (delivered["agent"], delivered["threshold"], delivered["spent_usd"]) == (
        "wh-slices-busy",
        "0.5",
        "0.61",
    )
    assert _thresholds(db_dsn, agent) == [Decimal("0.5")]
    assert list(state.acked().values()) == [1]
    assert "Traceback" not in " ".join(watcher.drain_err())


def test_fire_missed_every_needs_the_webhook(db_dsn: str) -> None:
    result = run(db_dsn, "budget", "watch", "--fire-missed-every", "10", "--count", "1")
    assert result.exit_code == 2 and "--fire-missed-every needs --webhook" in result.output


@pytest.mark.parametrize("every", ["0.001", "0.49"])
def test_fire_missed_every_refuses_a_period_that_would_run_it_back_to_back(every: str) -> None:
    """Each run of fire_missed_alerts() reads every budget's current periods: a period of a millisecond would
    run it back to back on the database. 0 (never) and 0.5 s or more are accepted; the refusal comes before
    any connection (the DSN names no server)."""
    nowhere = "host=127.0.0.1 port=1 dbname=sigledger connect_timeout=2"
    result = run(nowhere, "budget", "watch", "--webhook", "http://127.0.0.1:9/", "--fire-missed-every", every)
    assert result.exit_code == 2, result.output
    assert f"--fire-missed-every must be 0 (never) or at least 0.5 s, got {float(every)}" in result.output
