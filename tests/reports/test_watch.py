"""`sigledger budget watch`: the NOTIFY payload is only a wake-up carrying an alert id; the watcher reads the
alert through the API, ignores what it cannot find or parse, and starts from now unless asked to replay."""

from __future__ import annotations

import json

import psycopg

from tests.reports.helpers import LineProcess, record, run, sigledger

MONEY_KEYS = ("limit_usd", "spent_usd")


def _agent(dsn: str, name: str) -> None:
    created = run(dsn, "agent", "create", name, "--limit", "1", "--alert", "0.5", "--alert", "1.0")
    assert created.exit_code == 0, created.output


def _watch(dsn: str, *args: str) -> LineProcess:
    watcher = LineProcess(sigledger("budget", "watch", "--dsn", dsn, *args))
    watcher.wait_err("watching", timeout=60)  # printed once LISTEN has taken effect
    return watcher


def test_notify_payload_carries_the_alert_id_only(db_dsn: str, app_dsn: str) -> None:
    _agent(db_dsn, "w-payload")
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("LISTEN sigledger_budget_alert")
        record(app_dsn, "w-payload", "0.6", "w-payload-1")
        notes = list(listener.notifies(timeout=10, stop_after=1))
    assert len(notes) == 1
    payload = json.loads(notes[0].payload)
    alert_id = conn_scalar(db_dsn, "SELECT max(id) FROM sigledger.budget_alert")
    assert payload == {"alert_id": alert_id}


def conn_scalar(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_watch_ignores_forged_and_malformed_notifications(db_dsn: str, app_dsn: str) -> None:
    _agent(db_dsn, "w-forged")
    watcher = _watch(db_dsn, "--count", "1")
    try:
        # any role may NOTIFY on the channel: the application role forges three
        with psycopg.connect(app_dsn, autocommit=True) as app:
            app.execute("SELECT pg_notify('sigledger_budget_alert', 'not json')")
            app.execute("""SELECT pg_notify('sigledger_budget_alert', '{"alert_id": 1e12}')""")
            app.execute("""SELECT pg_notify('sigledger_budget_alert', '{"alert_id": "x"}')""")
            app.execute("""SELECT pg_notify('sigledger_budget_alert', '{"alert_id": 999999}')""")
        record(app_dsn, "w-forged", "0.6", "w-forged-1")  # the real one: crosses 0.5
        alert = json.loads(watcher.line())
        assert watcher.wait(timeout=60) == 0, watcher.drain_err()
    finally:
        watcher.stop()
    assert alert["level"] == "agent" and alert["agent"] == "w-forged" and alert["threshold"] == "0.5"
    warnings = " ".join(watcher.drain_err())
    assert "not json" in warnings and "1e12" in warnings and '"x"' in warnings and "999999" in warnings
    assert "Traceback" not in warnings


def test_watch_starts_from_now_and_replays_on_request(db_dsn: str, app_dsn: str) -> None:
    _agent(db_dsn, "w-now")
    record(app_dsn, "w-now", "0.6", "w-now-1")  # an alert stored before the watcher starts
    watcher = _watch(db_dsn, "--count", "1")
    try:
        record(app_dsn, "w-now", "0.5", "w-now-2")  # crosses 1.0
        first = json.loads(watcher.line())
        assert watcher.wait(timeout=60) == 0
    finally:
        watcher.stop()
    assert first["threshold"] == "1", first  # normalised like every amount and ratio

    replay = LineProcess(sigledger("budget", "watch", "--dsn", db_dsn, "--replay", "--count", "2"))
    try:
        lines = [json.loads(replay.line()) for _ in range(2)]
        assert replay.wait(timeout=60) == 0
    finally:
        replay.stop()
    assert [a["threshold"] for a in lines] == ["0.5", "1"]


def test_alert_shape_is_the_same_in_watch_output_and_the_read_api(db_dsn: str, readonly_dsn: str) -> None:
    _agent(db_dsn, "w-shape")
    watcher = _watch(db_dsn, "--count", "1")
    try:
        record(db_dsn, "w-shape", "0.7", "w-shape-1")
        printed = json.loads(watcher.line())
        assert watcher.wait(timeout=60) == 0
    finally:
        watcher.stop()
    with psycopg.connect(readonly_dsn, autocommit=True) as ro:
        row = ro.execute(
            "SELECT document FROM sigledger.budget_alert_feed(p_after_id => 0, p_limit => 10)"
        ).fetchone()
    assert row is not None
    assert printed == row[0]
    assert set(printed) >= {"alert_id", "agent", "name", "level", "period", "period_start", "threshold"}
    assert printed["name"] == "w-shape" and printed["period"] == "none"
    for key in MONEY_KEYS:
        assert isinstance(printed[key], str), (key, printed[key])
    assert printed["limit_usd"] == "1" and printed["spent_usd"] == "0.7"


def test_watch_survives_an_out_of_range_id_and_does_not_print_an_old_alert_as_new(
    db_dsn: str, app_dsn: str
) -> None:
    """Issue 11.5: an alert_id beyond bigint (22003 in the database) killed the watcher (exit 1); a forged
    payload naming an alert stored before the watcher started printed that old alert as new. Now the id must
    be 1 .. 2**63-1, an error reading one notification is a warning, and the watcher prints only alerts above
    the newest one stored when it started (its high-water)."""
    _agent(db_dsn, "w-range")
    record(app_dsn, "w-range", "0.6", "w-range-1")  # an old alert, stored before the watcher starts
    old = conn_scalar(db_dsn, "SELECT max(id) FROM sigledger.budget_alert")
    watcher = _watch(db_dsn, "--count", "1")
    try:
        with psycopg.connect(app_dsn, autocommit=True) as app:
            app.execute(
                """SELECT pg_notify('sigledger_budget_alert', '{"alert_id": 99999999999999999999999}')"""
            )
            app.execute("SELECT pg_notify('sigledger_budget_alert', %s)", (json.dumps({"alert_id": old}),))
        record(app_dsn, "w-range", "0.5", "w-range-2")  # the real one: crosses 1.0
        alert = json.loads(watcher.line())
        assert watcher.wait(timeout=60) == 0, watcher.drain_err()
    finally:
        watcher.stop()
    assert alert["alert_id"] != old and alert["threshold"] == "1", alert
    warnings = " ".join(watcher.drain_err())
    assert "99999999999999999999999" in warnings and "Traceback" not in warnings, warnings
