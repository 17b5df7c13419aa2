"""The read API in SQL, called as the real roles: spend by every dimension with totals, budgets near their limit
at every level, the tree, open reservations, overruns, prices, the quarantine and its re-submission."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.conftest import LOGINS

NOW = dt.datetime.now(dt.UTC)
#: (agent, model, provider, cost, days ago, tag) - ledger rows put in place as the owner
ROWS = [
    ("ra", "gpt", "openai", "1.10", 1, "alpha"),
    ("ra", "gpt", "openai", "0.40", 2, None),
    ("ra", "claude", "anthropic", "2.00", 2, "beta"),
    ("rb", "claude", "anthropic", "0.75", 1, "alpha"),
    ("rb", "gpt", "openai", "0.05", 40, None),  # outside a 30-day range
    ("rc", "gemini", "google", "3.00", 3, None),
]


def seed(conn: psycopg.Connection) -> dict[str, Any]:
    """org acme > team research > agent ra; agent rb directly under acme; agent rc without a budget."""
    org = conn.execute("SELECT sigledger.create_group_budget('org', 'acme', 100)").fetchone()[0]  # type: ignore[index]
    team = conn.execute(
        "SELECT sigledger.create_group_budget('team', 'research', 10, p_parent_budget_id => %s)", (org,)
    ).fetchone()[0]  # type: ignore[index]
    ids = {}
    for name, limit, parent in (("ra", 5, team), ("rb", 1, org)):
        ids[name] = conn.execute(
            "SELECT sigledger.create_agent(%s, %s::numeric, p_parent_budget_id => %s)", (name, limit, parent)
        ).fetchone()[0]  # type: ignore[index]
    ids["rc"] = conn.execute("SELECT sigledger.create_agent('rc')").fetchone()[0]  # type: ignore[index]
    for n, (agent, model, provider, cost, days, tag) in enumerate(ROWS):
        at = NOW - dt.timedelta(days=days)
        conn.execute(
            "INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, tokens_input,"
            " tokens_output, cost_usd, charged_at, created_at, metadata) VALUES (%s, %s, %s, %s, 10, 5, %s, %s, %s, %s)",
            (
                f"read-{n}",
                ids[agent],
                model,
                provider,
                Decimal(cost),
                at,
                at,
                Jsonb({"tag": tag} if tag else {}),
            ),
        )
    return {"org": org, "team": team, "agents": ids}


def report(conn: psycopg.Connection, by: list[str], **kw: Any) -> list[dict[str, Any]]:
    args = ", ".join(f"p_{k} => %({k})s" for k in kw)
    sql = (
        "SELECT * FROM sigledger.spend_report(now() - interval '30 days', now(), %(by)s::text[]"
        + (", " + args if args else "")
        + ")"
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, {"by": by, **kw}).fetchall()


def expected(key: Any) -> dict[Any, Decimal]:
    out: dict[Any, Decimal] = defaultdict(Decimal)
    for row in ROWS:
        if row[4] <= 30:
            out[key(row)] += Decimal(row[3])
    return dict(out)


TEAM = {"ra": "research", "rb": None, "rc": None}
ORG = {"ra": "acme", "rb": "acme", "rc": None}


@pytest.mark.parametrize(
    ("by", "column", "key"),
    [
        (["agent"], "agent", lambda r: r[0]),
        (["team"], "team", lambda r: TEAM[r[0]]),
        (["org"], "org", lambda r: ORG[r[0]]),
        (["model"], "model", lambda r: r[1]),
        (["provider"], "provider", lambda r: r[2]),
        (["tag"], "tag", lambda r: r[5]),
    ],
)
def test_spend_by_one_dimension_with_a_total(
    conn: psycopg.Connection, readonly_dsn: str, by: list[str], column: str, key: Any
) -> None:
    seed(conn)
    with psycopg.connect(readonly_dsn, autocommit=True) as ro:
        rows = report(ro, by)
    groups = {r[column]: r["spend_usd"] for r in rows if not r["is_total"]}
    assert groups == expected(key)
    total = rows[-1]
    assert total["is_total"] and total["spend_usd"] == sum(expected(key).values())
    assert total["calls"] == sum(1 for r in ROWS if r[4] <= 30)
    assert total["input_tokens"] == 10 * total["calls"]


def test_spend_by_day_and_model_of_one_agent_and_under_a_budget(
    conn: psycopg.Connection, app_dsn: str
) -> None:
    s = seed(conn)
    with psycopg.connect(app_dsn, autocommit=True) as app:
        rows = report(app, ["day", "model"], agent_id=s["agents"]["ra"])
        under_team = report(app, ["agent"], budget_id=s["team"])
        under_org = report(app, ["agent"], budget_id=s["org"])
    day = {(r["bucket"].date(), r["model"]): r["spend_usd"] for r in rows if not r["is_total"]}
    want = {
        ((NOW - dt.timedelta(days=d)).date(), m): Decimal(c)
        for a, m, _p, c, d, _t in ROWS
        if a == "ra" and d != 2
    }
    want[((NOW - dt.timedelta(days=2)).date(), "gpt")] = Decimal("0.40")
    want[((NOW - dt.timedelta(days=2)).date(), "claude")] = Decimal("2.00")
    assert day == want
    assert [r["agent"] for r in under_team if not r["is_total"]] == ["ra"]
    assert {r["agent"] for r in under_org if not r["is_total"]} == {"ra", "rb"}


@pytest.mark.parametrize(
    ("call", "sqlstate", "message"),
    [
        ("spend_report(now(), now() - interval '1 day')", "22023", "until must lie after since"),
        ("spend_report(NULL, now())", "22004", "since and until must not be NULL"),
        ("spend_report(now() - interval '1 day', now(), '{color}')", "22023", "dimensions must be among"),
        ("spend_report(now() - interval '1 day', now(), '{day,month}')", "22023", "at most one of day, week"),
        ("spend_report(now() - interval '1 day', now(), '{agent,agent}')", "22023", "repeated dimension"),
        ("spend_report(now() - interval '1 day', now(), '{agent,team,org,model,tag}')", "22023", "at most 4"),
        ("spend_report(now() - interval '1 day', now(), '{tag}', p_tag_key => ' ')", "22023", "tag_key"),
        (
            "spend_report(now() - interval '1 day', now(), p_agent_id => '00000000-0000-0000-0000-000000000000')",
            "P0002",
            "unknown agent",
        ),
        (
            "spend_report(now() - interval '1 day', now(), p_budget_id => 999999)",
            "P0002",
            "unknown budget 999999",
        ),
        ("spend_top(now() - interval '1 day', now(), '{agent}', 0)", "22023", "limit must be between"),
        ("budgets_near_limit('NaN')", "22023", "threshold must be a finite number"),
        ("budgets_near_limit(0.8, 'galaxy')", "22023", "level must be org, team or agent"),
        ("open_reservations(p_limit => 0)", "22023", "limit must be between"),
    ],
)
def test_bad_arguments_name_the_value(readonly_dsn: str, call: str, sqlstate: str, message: str) -> None:
    with psycopg.connect(readonly_dsn, autocommit=True) as ro, pytest.raises(psycopg.Error) as err:
        ro.execute(f"SELECT * FROM sigledger.{call}")
    assert err.value.sqlstate == sqlstate and message in str(err.value), str(err.value)


def test_near_limit_at_every_level_and_the_tree(conn: psycopg.Connection, readonly_dsn: str) -> None:
    s = seed(conn)
    # charged through the API: ra 4.6 of 5 (team research 4.6 of 10), rb 1.2 of 1 (over, recorded excess)
    conn.execute("SELECT sigledger.record_cost('near-1', %s, 'm', 'p', 0, 0, 4.6)", (s["agents"]["ra"],))
    conn.execute("SELECT sigledger.record_cost('near-2', %s, 'm', 'p', 0, 0, 1.2)", (s["agents"]["rb"],))
    with psycopg.connect(readonly_dsn, autocommit=True) as ro, ro.cursor(row_factory=dict_row) as cur:
        near = cur.execute("SELECT * FROM sigledger.budgets_near_limit(0.4)").fetchall()
        tree = cur.execute("SELECT * FROM sigledger.budget_tree()").fetchall()
    assert [(r["level"], r["name"], r["state"]) for r in near] == [
        ("agent", "rb", "over"),
        ("agent", "ra", "near"),
        ("team", "research", "near"),
    ]
    assert near[0]["used_ratio"] == Decimal("1.2") and near[2]["used_ratio"] == Decimal("0.46")
    assert [(r["depth"], r["level"], r["name"]) for r in tree] == [
        (0, "org", "acme"),
        (1, "agent", "rb"),
        (1, "team", "research"),
        (2, "agent", "ra"),
    ]
    assert tree[0]["spent_usd"] == Decimal("5.8") and tree[0]["remaining_usd"] == Decimal("94.2")


def test_open_reservations_overdue_and_overruns(conn: psycopg.Connection, readonly_dsn: str) -> None:
    s = seed(conn)
    ra = s["agents"]["ra"]
    kept = conn.execute("SELECT reservation_id FROM sigledger.reserve_budget(%s, 0.5)", (ra,)).fetchone()[0]  # type: ignore[index]
    settled = conn.execute("SELECT reservation_id FROM sigledger.reserve_budget(%s, 0.1)", (ra,)).fetchone()[
        0
    ]  # type: ignore[index]
    conn.execute("SELECT * FROM sigledger.settle_budget(%s, 0.3)", (settled,))
    # one hold whose expiry has passed without a sweep (as the owner: the API refuses a TTL in the past)
    overdue = conn.execute("SELECT reservation_id FROM sigledger.reserve_budget(%s, 0.2)", (ra,)).fetchone()[
        0
    ]  # type: ignore[index]
    conn.execute(
        "UPDATE sigledger.budget_reservation SET created_at = now() - interval '2 hours',"
        " expires_at = now() - interval '1 hour' WHERE id = %s",
        (overdue,),
    )
    with psycopg.connect(readonly_dsn, autocommit=True) as ro, ro.cursor(row_factory=dict_row) as cur:
        held = cur.execute("SELECT * FROM sigledger.open_reservations()").fetchall()
        over = cur.execute(
            "SELECT * FROM sigledger.overrun_report(now() - interval '1 hour', now() + interval '1 minute')"
        ).fetchall()
    assert [(r["reservation_id"], r["overdue"], r["agent"]) for r in held] == [
        (overdue, True, "ra"),
        (kept, False, "ra"),
    ]
    assert [(r["reservation_id"], r["overrun_usd"]) for r in over] == [(settled, Decimal("0.2"))]


def test_prices_current_and_history(conn: psycopg.Connection, readonly_dsn: str) -> None:
    conn.execute("SELECT sigledger.add_model_price('openai', 'gpt', 1, 2, now() - interval '10 days')")
    conn.execute("SELECT sigledger.add_model_price('openai', 'gpt', 3, 4, now() - interval '1 day')")
    conn.execute("SELECT sigledger.add_model_price('openai', 'gpt', 5, 6, now() + interval '5 days')")
    with psycopg.connect(readonly_dsn, autocommit=True) as ro:
        current = ro.execute(
            "SELECT input_usd_per_mtok, current FROM sigledger.list_model_prices()"
        ).fetchall()
        history = ro.execute("SELECT count(*) FROM sigledger.list_model_prices(p_history => true)").fetchone()
    assert current == [(Decimal("3"), True), (Decimal("5"), False)]
    assert history == (3,)


def test_reading_roles_read_spend_only_the_admin_sees_the_quarantine(
    conn: psycopg.Connection, readonly_dsn: str, app_dsn: str, admin_dsn: str
) -> None:
    seed(conn)
    reads = [
        "SELECT * FROM sigledger.spend_report(now() - interval '7 days', now())",
        "SELECT * FROM sigledger.spend_top(now() - interval '7 days', now())",
        "SELECT * FROM sigledger.budget_tree()",
        "SELECT * FROM sigledger.budgets_near_limit()",
        "SELECT * FROM sigledger.list_agents()",
        "SELECT * FROM sigledger.open_reservations()",
        "SELECT * FROM sigledger.overrun_report(now() - interval '7 days', now())",
        "SELECT * FROM sigledger.list_model_prices()",
        "SELECT * FROM sigledger.budget_alert_feed()",
        "SELECT * FROM sigledger.metrics_snapshot()",
        "SELECT * FROM sigledger.alert_sink_status()",
    ]
    for dsn in (readonly_dsn, app_dsn, admin_dsn):
        with psycopg.connect(dsn, autocommit=True) as c:
            for sql in reads:
                c.execute(sql).fetchall()
    for dsn in (readonly_dsn, app_dsn):
        with psycopg.connect(dsn, autocommit=True) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT * FROM sigledger.quarantine_list()")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT * FROM sigledger.quarantine_resubmit(1)")
    with (
        psycopg.connect(readonly_dsn, autocommit=True) as c,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        c.execute("SELECT * FROM sigledger.alert_sink_open('x')")
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        assert c.execute("SELECT * FROM sigledger.quarantine_list()").fetchall() == []


def test_admin_resubmits_a_fixed_quarantined_row(conn: psycopg.Connection, admin_dsn: str) -> None:
    s = seed(conn)
    ra = str(s["agents"]["ra"])
    old = (NOW - dt.timedelta(days=30)).isoformat()
    batch = [
        {"idempotency_key": "q-ok", "agent_id": ra, "model": "m", "provider": "p", "cost_usd": "0.1"},
        {
            "idempotency_key": "q-old",
            "agent_id": ra,
            "model": "m",
            "provider": "p",
            "cost_usd": "0.2",
            "created_at": old,
        },
    ]
    conn.execute("SELECT * FROM sigledger.record_costs(%s)", (Jsonb(batch),))
    spent = "SELECT spent_usd FROM sigledger.budget_overview WHERE name = 'research'"
    before = conn.execute(spent).fetchone()
    with psycopg.connect(admin_dsn, autocommit=True) as admin, admin.cursor(row_factory=dict_row) as cur:
        listed = cur.execute("SELECT * FROM sigledger.quarantine_list()").fetchall()
        assert [(r["idempotency_key"], r["sqlstate"]) for r in listed] == [("q-old", "22023")]
        assert "spool-replay window" in listed[0]["reason"]
        qid = listed[0]["quarantine_id"]
        # a bad fix is refused with its SQLSTATE and changes nothing
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            cur.execute(
                "SELECT * FROM sigledger.quarantine_resubmit(%s, %s)", (qid, Jsonb({"agent_id": "nobody"}))
            )
        assert cur.execute("SELECT * FROM sigledger.quarantine_list()").fetchall()[0]["resolved_at"] is None
        done = cur.execute(
            "SELECT * FROM sigledger.quarantine_resubmit(%s, %s)", (qid, Jsonb({"created_at": None}))
        ).fetchone()
        again = cur.execute("SELECT * FROM sigledger.quarantine_resubmit(%s)", (qid,)).fetchone()
        assert cur.execute("SELECT * FROM sigledger.quarantine_list()").fetchall() == []
        resolved = cur.execute(
            "SELECT * FROM sigledger.quarantine_list(p_include_resolved => true)"
        ).fetchone()
    assert done is not None and done["inserted"] and not done["replayed"]
    assert again is not None and again["replayed"] and again["ledger_id"] == done["ledger_id"]
    assert resolved is not None and resolved["resolved_by"] == LOGINS["admin"]  # the login that re-submitted
    assert resolved["resolved_ledger_id"] == done["ledger_id"]
    after = conn.execute(spent).fetchone()
    assert before is not None and after is not None and after[0] - before[0] == Decimal("0.2")
    row = conn.execute(
        "SELECT cost_usd FROM sigledger.llm_cost_log WHERE idempotency_key = 'q-old'"
    ).fetchone()
    assert row == (Decimal("0.2"),)


def test_current_period_starts_match_the_budget_functions(conn: psycopg.Connection) -> None:
    """_budget_current picks the period start without calling _period_start per budget: they must agree."""
    for period in ("none", "daily", "weekly", "monthly"):
        conn.execute("SELECT sigledger.create_agent(%s, 5, %s)", (f"ps-{period}", period))
    rows = conn.execute(
        "SELECT c.period, c.period_start, sigledger._period_start(c.period, now()) FROM sigledger._budget_current() c"
    ).fetchall()
    assert {r[0] for r in rows} == {"none", "daily", "weekly", "monthly"}
    assert all(r[1] == r[2] for r in rows), rows


def test_an_application_login_cannot_mark_the_operators_alerts_delivered(
    conn: psycopg.Connection, app_dsn: str, admin_dsn: str
) -> None:
    """Issue 15: the alert sinks are the operators' (their watcher logs in as an admin member). An application
    login may not open, read or mark delivered a sink: 42501 (PermissionDenied), and nothing changes, so an
    application cannot hide its own overspend alerts from the operators' webhook."""
    from sigledger.core.errors import PermissionDenied, translate

    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute("SELECT * FROM sigledger.alert_sink_open('ops-hook')")
    agent = conn.execute(
        "SELECT sigledger.create_agent('sink-victim', 1, p_alert_thresholds => '{0.5}')"
    ).fetchone()
    assert agent is not None
    conn.execute("SELECT sigledger.record_cost('sink-1', %s, 'm', 'p', 0, 0, 0.6)", (agent[0],))
    conn.commit()
    (alert,) = conn.execute("SELECT max(id) FROM sigledger.budget_alert").fetchone()  # type: ignore[misc]

    def state() -> tuple:
        return conn.execute(
            "SELECT (SELECT count(*) FROM sigledger.alert_delivery), "
            "(SELECT pending FROM sigledger.alert_sink_status() WHERE sink = 'ops-hook')"
        ).fetchone()  # type: ignore[return-value]

    before = state()
    assert before == (0, 1)
    with psycopg.connect(app_dsn, autocommit=True) as c:
        for sql, args in (
            ("SELECT sigledger.alert_sink_delivered('ops-hook', %s, 1)", (alert,)),
            ("SELECT * FROM sigledger.alert_sink_pending('ops-hook')", ()),
            ("SELECT * FROM sigledger.alert_sink_open('app-hook')", ()),
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
                c.execute(sql, args)
            assert isinstance(translate(caught.value), PermissionDenied)
    conn.commit()
    assert state() == before
    with psycopg.connect(admin_dsn, autocommit=True) as c:  # the operators' watcher
        assert c.execute("SELECT sigledger.alert_sink_delivered('ops-hook', %s, 1)", (alert,)).fetchone() == (
            True,
        )
