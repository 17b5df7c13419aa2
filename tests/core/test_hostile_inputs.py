"""Property: whatever hostile argument a caller passes to any API function, the call is refused with a SQLSTATE
that the function documents (its COMMENT's SQLSTATE line, or a code PostgreSQL raises while decoding an
argument, docs/errors.md) and no table changes. Batches are the exception that proves the rule:
ingest_signals rejects every hostile item by row (with a documented sqlstate) and writes nothing; record_costs
quarantines every hostile row and writes nothing else.

Each API function runs as the role that may call it (app, or admin for the budget administration), with
hypothesis choosing the function, which of its arguments are hostile (at least one) and how; EXAMPLES per
function keep the run bounded (one database for all of them; about 30 s)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sigledger.core.apidoc import sqlstates

from tests.core.hostile import (
    DECODING,
    Arg,
    bad_enum,
    bad_interval,
    bad_json_object,
    bad_key,
    bad_money,
    bad_name,
    bad_timestamp,
    bad_tokens,
    bad_uuid_list,
    blank,
    controlled,
    hostile_batch,
    hostile_cost,
    hostile_signal,
    too_long,
    unknown_uuid,
)

EXAMPLES = 8  # per function
ITEM_SQLSTATES = {"22023", "22007", "22008", "22009"}  # a rejected ingest_signals item (its COMMENT)


@dataclass
class World:
    """Valid objects for the arguments that are not hostile in an example."""

    agent: str
    reservation: int
    budget: int
    entities: list[str]
    opportunities: list[str]
    signal: str


@pytest.fixture
def world(conn: psycopg.Connection) -> World:
    agent = conn.execute("SELECT sigledger.create_agent('hostile-agent', 100)").fetchone()[0]
    conn.execute("SELECT sigledger.add_model_price('p', 'm', 1, 1, now() - interval '1 day')")
    reservation = conn.execute(
        "SELECT reservation_id FROM sigledger.reserve_budget(%s, 1)", (agent,)
    ).fetchone()[0]
    budget = conn.execute("SELECT sigledger.create_group_budget('team', 'hostile-team', 50)").fetchone()[0]
    entities = [
        str(conn.execute("SELECT sigledger.create_entity(%s)", (n,)).fetchone()[0])
        for n in ("Known", "Other")
    ]
    opps = [
        str(conn.execute("SELECT sigledger.create_opportunity(%s)", (t,)).fetchone()[0])
        for t in ("Deal", "Lead")
    ]
    signal = conn.execute(
        "SELECT signal_id FROM sigledger.ingest_signal('src', '1', now(), '{}', ARRAY['Known'])"
    ).fetchone()[0]
    conn.execute("SELECT * FROM sigledger.alert_sink_open('hostile-sink')")
    return World(str(agent), reservation, budget, entities, opps, str(signal))


def _fingerprint_sql(conn: psycopg.Connection) -> str:
    tables = [r[0] for r in conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = 'sigledger'::regnamespace "
        "AND c.relkind = 'r' ORDER BY 1").fetchall()]  # fmt: skip
    return " UNION ALL ".join(
        f"SELECT '{t}', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"
        for t in tables
    )


@pytest.fixture
def callers(app_dsn: str, admin_dsn: str) -> Iterator[dict[str, psycopg.Connection]]:
    with (
        psycopg.connect(app_dsn, autocommit=True) as app,
        psycopg.connect(admin_dsn, autocommit=True) as admin,
    ):
        yield {"app": app, "admin": admin}


def specs(w: World) -> dict[str, tuple[str, list[Arg]]]:
    """function -> (role, arguments), each argument with a valid and (when it can be wrong) a hostile strategy."""
    agent, uuid_ = st.just(w.agent), unknown_uuid()
    name, model = st.sampled_from(["Acme", "Beta"]), st.just("m")
    tokens = st.integers(0, 1000).map(str)
    some_entity, some_opp = st.sampled_from(w.entities), st.sampled_from(w.opportunities)
    thresholds = st.one_of(
        st.just(["0.5"] * 11), st.just(["NaN"]), st.just(["0"]), st.just(["11"]), st.just([None]),
        st.just(["0.5"] * 100_000),
    )  # fmt: skip
    period, policy = st.just("monthly"), st.just("closed")
    bigid = st.integers(10**12, 2**62).map(str) | st.sampled_from(["-1", "99999999999999999999"])
    return {
        "record_cost": ("app", [
            Arg("p_idempotency_key", "text", st.uuids().map(str), bad_key()),
            Arg("p_agent_id", "uuid", agent, uuid_ | st.none()),
            Arg("p_model", "text", model, bad_name(200, 800)),
            Arg("p_provider", "text", st.just("p"), bad_name(200, 800)),
            Arg("p_input_tokens", "bigint", tokens, bad_tokens()),
            Arg("p_output_tokens", "bigint", tokens, bad_tokens()),
            Arg("p_cost_usd", "numeric", st.just("0.01"), bad_money(nullable=False)),
            Arg("p_created_at", "timestamptz", st.none(), bad_timestamp()),
            Arg("p_metadata", "jsonb", st.just("{}"), bad_json_object()),
        ]),
        "cost_trends": ("app", [Arg("p_days", "integer", st.just("7"),
                                    st.sampled_from(["0", "-1", "366", "3000000000", "x"]) | st.none())]),
        "reserve_budget": ("app", [
            Arg("p_agent_id", "uuid", agent, uuid_ | st.none()),
            Arg("p_estimate_usd", "numeric", st.just("1"), bad_money() | st.just("0")),
            Arg("p_ttl", "interval", st.just("10 minutes"), bad_interval()),
            Arg("p_idempotency_key", "text", st.uuids().map(str), blank() | controlled() | too_long(200, 800)),
        ]),
        "settle_budget": ("app", [
            Arg("p_reservation_id", "bigint", st.just(str(w.reservation)), bigid | st.none()),
            Arg("p_actual_usd", "numeric", st.just("0.5"), bad_money(nullable=False)),
            Arg("p_input_tokens", "bigint", tokens, bad_tokens()),
            Arg("p_output_tokens", "bigint", tokens, bad_tokens()),
            Arg("p_model", "text", model, bad_name(200, 800)),
            Arg("p_provider", "text", st.just("p"), bad_name(200, 800)),
            Arg("p_metadata", "jsonb", st.just("{}"), bad_json_object()),
        ]),
        "release_budget": ("app", [Arg("p_reservation_id", "bigint", st.just(str(w.reservation)), bigid | st.none())]),
        "check_and_record_budget": ("app", [
            Arg("p_agent_id", "uuid", agent, uuid_ | st.none()),
            Arg("p_cost_usd", "numeric", st.just("0.01"), bad_money()),
            Arg("p_expected_version", "bigint", st.none(), bigid),
            Arg("p_nowait", "boolean", st.just("false"), st.sampled_from(["maybe", "2"])),
        ]),
        "budget_status": ("app", [Arg("p_agent_id", "uuid", agent, uuid_ | st.none())]),
        "budget_alerts_after": ("app", [Arg("p_after_id", "bigint", st.just("0"), st.sampled_from(["1e30", "x"]))]),
        "find_agent": ("app", [Arg("p_name", "text", st.just("hostile-agent"), bad_name(200, 800) | uuid_)]),
        "ingest_signal": ("app", [
            Arg("p_source", "text", st.just("src"), bad_name(200, 800)),
            Arg("p_external_id", "text", st.uuids().map(str), bad_name(500, 1500)),
            Arg("p_occurred_at", "timestamptz", st.just("2026-01-01"),
                st.sampled_from(["1999-12-31", "infinity", "yesterday-ish", "2026-01-01 99:00", "2026-01-01 10:00 Mars/Olympus"])),
            Arg("p_payload", "jsonb", st.just("{}"), bad_json_object()),
            Arg("p_mentions", "text[]", st.just(["Acme"]),
                st.lists(bad_name(500, 2000), min_size=1, max_size=3) | st.just([f"m{i}" for i in range(201)])),
            Arg("p_content", "text", st.none(), st.just("c" * 1_000_001)),
            Arg("p_unknown_policy", "text", st.none(), bad_enum(("create", "review"))),
        ]),
        "create_entity": ("app", [
            Arg("p_name", "text", name, bad_name(500, 2000)),
            Arg("p_aliases", "text[]", st.just([]),
                st.lists(bad_name(500, 2000), min_size=1, max_size=3) | st.just([f"a{i}" for i in range(101)])),
            Arg("p_entity_type", "text", st.just("company"), bad_name(100, 400)),
        ]),
        "add_alias": ("app", [
            Arg("p_entity_id", "uuid", some_entity, uuid_ | st.none()),
            Arg("p_alias", "text", name, bad_name(500, 2000)),
        ]),
        "resolve_entity": ("app", [Arg("p_name", "text", name, bad_name(500, 2000))]),
        "merge_entities": ("app", [
            Arg("p_target", "uuid", st.just(w.entities[0]), uuid_ | st.none()),
            Arg("p_sources", "uuid[]", st.just([w.entities[1]]), bad_uuid_list(1000, w.entities)),
        ]),
        "create_opportunity": ("app", [
            Arg("p_title", "text", name, bad_name(500, 2000)),
            Arg("p_description", "text", st.none(), st.just("d" * 10_001) | st.just("\U0001f600" * 10_001)),
            Arg("p_status", "text", st.just("open"), bad_enum(("open", "won", "lost")) | st.just("merged")),
            Arg("p_score", "numeric", st.none(), st.sampled_from(["NaN", "-1", "100.5", "1e400"])),
            Arg("p_value_usd", "numeric", st.none(), st.sampled_from(["NaN", "-0.01", "1e12", "999999999999.995"])),
            Arg("p_attributes", "jsonb", st.just("{}"), bad_json_object()),
        ]),
        "link_signals": ("app", [
            Arg("p_opportunity_id", "uuid", some_opp, uuid_ | st.none()),
            Arg("p_signal_ids", "uuid[]", st.just([w.signal]), bad_uuid_list(10_000, [w.signal], duplicates_refused=False)),
        ]),
        "merge_opportunities": ("app", [
            Arg("p_target", "uuid", st.just(w.opportunities[0]), uuid_ | st.none()),
            Arg("p_sources", "uuid[]", st.just([w.opportunities[1]]), bad_uuid_list(1000, w.opportunities)),
        ]),
        "opportunity_signals_of": ("app", [Arg("p_opportunity_id", "uuid", some_opp, uuid_)]),
        "entity_signals_of": ("app", [Arg("p_entity_id", "uuid", some_entity, uuid_)]),
        "create_agent": ("admin", [
            Arg("p_name", "text", st.uuids().map(lambda u: f"agent-{u}"), bad_name(200, 800) | st.just("hostile-agent")),
            Arg("p_limit_usd", "numeric", st.just("10"), bad_money("1000000000", nullable=False)),
            Arg("p_period", "text", period, bad_enum(("none", "daily", "weekly", "monthly"))),
            Arg("p_grace_ratio", "numeric", st.just("0"), bad_money("1", nullable=False)),
            Arg("p_fail_policy", "text", policy, bad_enum(("open", "closed"))),
            Arg("p_alert_thresholds", "numeric[]", st.just(["0.8"]), thresholds),
            Arg("p_parent_budget_id", "bigint", st.none(), bigid),
        ]),
        "set_budget": ("admin", [
            Arg("p_agent_id", "uuid", agent, uuid_ | st.none()),
            Arg("p_limit_usd", "numeric", st.just("10"), bad_money("1000000000", nullable=False)),
            Arg("p_period", "text", period, bad_enum(("none", "daily", "weekly", "monthly"))),
            Arg("p_alert_thresholds", "numeric[]", st.just(["0.8"]), thresholds),
            Arg("p_parent_budget_id", "bigint", st.none(), bigid | st.just(str(w.budget + 10**9))),
        ]),
        "update_budget": ("admin", [
            Arg("p_budget_id", "bigint", st.just(str(w.budget)), bigid),
            Arg("p_limit_usd", "numeric", st.just("10"), bad_money("1000000000", nullable=False)),
            Arg("p_grace_ratio", "numeric", st.just("0"), bad_money("1", nullable=False)),
            Arg("p_fail_policy", "text", policy, bad_enum(("open", "closed"))),
        ]),
        "create_group_budget": ("admin", [
            Arg("p_level", "text", st.just("org"), bad_enum(("team", "org")) | st.just("agent")),
            Arg("p_name", "text", st.uuids().map(lambda u: f"org-{u}"), bad_name(200, 800)),
            Arg("p_limit_usd", "numeric", st.just("10"), bad_money("1000000000")),
        ]),
        "add_model_price": ("admin", [
            Arg("p_provider", "text", st.just("p2"), bad_name(200, 800)),
            Arg("p_model", "text", st.uuids().map(str), bad_name(200, 800)),
            Arg("p_input_usd_per_mtok", "numeric", st.just("1"), bad_money("100000")),
            Arg("p_output_usd_per_mtok", "numeric", st.just("1"), bad_money("100000")),
            Arg("p_valid_from", "timestamptz", st.none(), st.sampled_from(["1999-12-31", "2200-01-01", "infinity", "yesterday-ish"])),
        ]),
        "reconcile_budgets": ("admin", [Arg("p_repair", "boolean", st.just("false"), st.none() | st.just("perhaps"))]),
        "expire_reservations": ("admin", [Arg("p_limit", "integer", st.just("10"), st.sampled_from(["0", "-5", "1000001", "3000000000"]) | st.none())]),
        "ensure_ledger_partitions": ("admin", [Arg("p_months_ahead", "integer", st.just("3"), st.sampled_from(["-1", "121", "x"]) | st.none())]),
        "fire_missed_alerts": ("admin", [Arg("p_lookback", "interval", st.just("1 day"), st.sampled_from(["-1 minute", "401 days", "1000000000 years", "2147483648 months", "soon"]) | st.none())]),
        # the batch calls of issue 13, refused as a whole (their per-item rows are their own contract)
        "reserve_budgets": ("app", [
            Arg("p_requests", "jsonb", st.just("[]"), hostile_batch() | st.just("[" + ",".join(["{}"] * 1001) + "]")),
            Arg("p_ttl", "interval", st.just("10 minutes"), bad_interval()),
            Arg("p_all_or_nothing", "boolean", st.just("false"), st.sampled_from(["maybe"])),
        ]),
        "settle_budgets": ("app", [
            Arg("p_settlements", "jsonb", st.just("[]"), hostile_batch() | st.just("[" + ",".join(["{}"] * 1001) + "]")),
        ]),
        "set_budget_slices": ("admin", [
            Arg("p_budget_id", "bigint", st.just(str(w.budget)), bigid | st.none()),
            Arg("p_slices", "integer", st.just("2"), st.sampled_from(["0", "-1", "65", "3000000000"]) | st.none()),
        ]),
        # the read side of issue 15
        "spend_report": ("app", [
            Arg("p_since", "timestamptz", st.just("2026-01-01"), st.none() | st.sampled_from(["yesterday-ish", "2026-13-01"])),
            Arg("p_until", "timestamptz", st.just("2026-02-01"), st.none() | st.just("2026-01-01 99:00")),
            Arg("p_by", "text[]", st.just(["agent"]),
                st.sampled_from([["nothing"], ["day", "week"], ["agent", "agent"], ["a", "b", "c", "d", "e"], [None]])),
            Arg("p_agent_id", "uuid", st.none(), uuid_),
            Arg("p_budget_id", "bigint", st.none(), bigid),
            Arg("p_tag_key", "text", st.just("tag"), bad_name(200, 800)),
        ]),
        "spend_top": ("app", [
            Arg("p_since", "timestamptz", st.just("2026-01-01"), st.none() | st.just("yesterday-ish")),
            Arg("p_until", "timestamptz", st.just("2026-02-01"), st.none()),
            Arg("p_by", "text[]", st.just(["agent"]), st.sampled_from([["nothing"], ["day", "month"]])),
            Arg("p_limit", "integer", st.just("10"), st.sampled_from(["0", "10001", "-3"]) | st.none()),
            Arg("p_tag_key", "text", st.just("tag"), bad_name(200, 800)),
        ]),
        "budgets_near_limit": ("app", [
            Arg("p_threshold", "numeric", st.just("0.8"), st.sampled_from(["NaN", "-1", "Infinity", "1e400"]) | st.none()),
            Arg("p_level", "text", st.none(), bad_enum(("org", "team", "agent"))),
        ]),
        "open_reservations": ("app", [
            Arg("p_agent_id", "uuid", st.none(), uuid_),
            Arg("p_limit", "integer", st.just("10"), st.sampled_from(["0", "100001", "-1"]) | st.none()),
        ]),
        "overrun_report": ("app", [
            Arg("p_since", "timestamptz", st.just("2026-01-01"), st.none() | st.just("yesterday-ish")),
            Arg("p_until", "timestamptz", st.just("2026-02-01"), st.none()),
            Arg("p_agent_id", "uuid", st.none(), uuid_),
            Arg("p_limit", "integer", st.just("10"), st.sampled_from(["0", "-1"]) | st.none()),
        ]),
        "budget_alert_feed": ("app", [
            Arg("p_after_id", "bigint", st.just("0"), st.sampled_from(["1e30", "x"])),
            Arg("p_limit", "integer", st.just("10"), st.sampled_from(["0", "100001"]) | st.none()),
        ]),
        "metrics_snapshot": ("app", [
            Arg("p_max_groups", "integer", st.just("10"), st.sampled_from(["-1", "1001"]) | st.none()),
            Arg("p_top_agents", "integer", st.just("10"), st.sampled_from(["-1", "1001"]) | st.none()),
            Arg("p_top_models", "integer", st.just("10"), st.sampled_from(["-1", "1001"]) | st.none()),
        ]),
        "alert_sink_open": ("admin", [
            Arg("p_sink", "text", st.just("hook"), bad_name(500, 2000)),
            Arg("p_replay", "boolean", st.just("false"), st.just("perhaps")),
        ]),
        "alert_sink_pending": ("admin", [
            Arg("p_sink", "text", st.just("hostile-sink"), uuid_ | blank()),
            Arg("p_limit", "integer", st.just("10"), st.sampled_from(["0", "10001"]) | st.none()),
        ]),
        "alert_sink_delivered": ("admin", [
            Arg("p_sink", "text", st.just("hostile-sink"), uuid_ | blank()),
            Arg("p_alert_id", "bigint", bigid, None),
            Arg("p_attempts", "integer", st.just("1"), st.sampled_from(["0", "1000001"]) | st.none()),
        ]),
        "quarantine_list": ("admin", [
            Arg("p_include_resolved", "boolean", st.just("false"), st.just("perhaps")),
            Arg("p_limit", "integer", st.just("10"), st.sampled_from(["0", "100001"]) | st.none()),
        ]),
        "quarantine_resubmit": ("admin", [
            Arg("p_quarantine_id", "bigint", bigid, bigid | st.none()),
            Arg("p_changes", "jsonb", st.just("{}"), bad_json_object()),
        ]),
    }  # fmt: skip


def _documented(conn: psycopg.Connection, function: str) -> set[str]:
    comments = conn.execute(
        "SELECT obj_description(p.oid, 'pg_proc') FROM pg_proc p "
        "WHERE p.pronamespace = 'sigledger'::regnamespace AND p.proname = %s",
        (function,),
    ).fetchall()
    return {code for (comment,) in comments for code in sqlstates(comment or "")}


def _call(caller: psycopg.Connection, function: str, args: list[Arg], values: list[Any]) -> list[tuple]:
    sql = f"SELECT * FROM sigledger.{function}(" + ", ".join(f"{a.name} => %s::{a.cast}" for a in args) + ")"
    return caller.execute(sql, values).fetchall()


FUNCTIONS = [
    "record_cost", "cost_trends", "reserve_budget", "settle_budget", "release_budget", "check_and_record_budget",
    "budget_status", "budget_alerts_after", "find_agent", "ingest_signal", "create_entity", "add_alias",
    "resolve_entity", "merge_entities", "create_opportunity", "link_signals", "merge_opportunities",
    "opportunity_signals_of", "entity_signals_of", "create_agent", "set_budget", "update_budget",
    "create_group_budget", "add_model_price", "reconcile_budgets", "expire_reservations", "ensure_ledger_partitions",
    "fire_missed_alerts",
    "reserve_budgets", "settle_budgets", "set_budget_slices", "spend_report", "spend_top", "budgets_near_limit",
    "open_reservations", "overrun_report", "budget_alert_feed", "metrics_snapshot", "alert_sink_open",
    "alert_sink_pending", "alert_sink_delivered", "quarantine_list", "quarantine_resubmit",
]  # fmt: skip
BATCHES_ONE_BY_ONE = [
    "ingest_signals",
    "record_costs",
]  # test_hostile_batch_items_are_rejected_one_by_one_...
# API functions no argument can make fail (no arguments, or a pure function, or documented "raises nothing"
# filters): nothing hostile to drive into them
NO_HOSTILE_ARGUMENT = {
    "graph_outbox_status": "no arguments",
    "alert_sink_status": "no arguments",
    "budget_alert_last_id": "no arguments",
    "budget_tree": "no arguments",
    "list_agents": "no arguments",
    "text_key": "a pure function of any text (NULL for NULL)",
    "budget_alert_document": "an unknown id answers NULL (raises nothing)",
    "list_model_prices": "optional filters (raises nothing)",
}
HYPOTHESIS = settings(
    max_examples=EXAMPLES * len(FUNCTIONS), deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip


def test_every_api_function_is_driven(conn: psycopg.Connection) -> None:
    api = {r[0] for r in conn.execute(
        "SELECT DISTINCT p.proname FROM pg_proc p WHERE p.pronamespace = 'sigledger'::regnamespace "
        "AND p.proname !~ '^_' AND p.prorettype <> 'trigger'::regtype AND p.prokind IN ('f', 'p')").fetchall()}  # fmt: skip
    covered = set(FUNCTIONS) | set(BATCHES_ONE_BY_ONE) | set(NO_HOSTILE_ARGUMENT)
    assert api - covered == set(), f"API functions without hostile inputs: {sorted(api - covered)}"
    assert covered - api == set(), f"not API functions: {sorted(covered - api)}"


@HYPOTHESIS
@given(data=st.data())
def test_hostile_arguments_are_refused_and_change_nothing(
    data: st.DataObject, conn: psycopg.Connection, world: World, callers: dict[str, psycopg.Connection]
) -> None:
    function = data.draw(st.sampled_from(FUNCTIONS), label="function")
    role, args = specs(world)[function]
    hostile = [a.name for a in args if a.hostile is not None]
    picked = data.draw(st.sets(st.sampled_from(hostile), min_size=1), label="hostile arguments")
    values = [data.draw(a.hostile if a.name in picked else a.valid, label=a.name) for a in args]  # type: ignore[arg-type]
    fingerprint = _fingerprint_sql(conn)
    before = conn.execute(fingerprint).fetchall()
    with pytest.raises(psycopg.Error) as info:
        _call(callers[role], function, args, values)
    allowed = _documented(conn, function) | DECODING
    assert info.value.sqlstate in allowed, (function, info.value.sqlstate, str(info.value)[:300])
    assert conn.execute(fingerprint).fetchall() == before, f"{function} changed a table"


BATCHES = settings(HYPOTHESIS, max_examples=4 * EXAMPLES)


@BATCHES
@given(data=st.data())
def test_hostile_batch_items_are_rejected_one_by_one_and_change_nothing(
    data: st.DataObject, conn: psycopg.Connection, world: World, callers: dict[str, psycopg.Connection]
) -> None:
    """ingest_signals rejects each hostile item as a row with a documented sqlstate and writes nothing;
    record_costs quarantines each hostile row and writes nothing else; a batch hostile as a whole is refused."""
    function = data.draw(st.sampled_from(["ingest_signals", "record_costs"]), label="function")
    as_whole = data.draw(st.booleans(), label="hostile as a whole")
    if as_whole:
        batch = data.draw(hostile_batch(), label="batch")
    else:
        items = hostile_signal() if function == "ingest_signals" else hostile_cost(world.agent)
        batch = json.dumps(data.draw(st.lists(items, min_size=1, max_size=5), label="items"))
    fingerprint = _fingerprint_sql(conn)
    before = dict((t, (n, h)) for t, n, h in conn.execute(fingerprint).fetchall())
    call = f"SELECT * FROM sigledger.{function}(p_batch => %s::jsonb)"
    if as_whole:
        with pytest.raises(psycopg.Error) as info:
            callers["app"].execute(call, (batch,))
        assert info.value.sqlstate in _documented(conn, function) | DECODING, (function, info.value.sqlstate)
        changed: dict[str, int] = {}
    elif function == "ingest_signals":
        rows = callers["app"].execute(call, (batch,)).fetchall()
        assert [r[2] for r in rows] == ["rejected"] * len(json.loads(batch)), rows
        assert {r[6] for r in rows} <= ITEM_SQLSTATES, rows
        changed = {}
    else:
        top = conn.execute("SELECT coalesce(max(id), 0) FROM sigledger.cost_quarantine").fetchone()[0]  # type: ignore[index]
        ((inserted, duplicates, quarantined),) = callers["app"].execute(call, (batch,)).fetchall()
        assert (inserted, duplicates, quarantined) == (0, 0, len(json.loads(batch)))
        # every row is in the quarantine, once: a row with a key that an earlier example (or an equal row of this
        # batch) quarantined adds no row (replay_key, V8_103); a row without a key adds one each time
        ((new, keyless, missing),) = conn.execute(
            """SELECT (SELECT count(*) FROM sigledger.cost_quarantine WHERE id > %s),
                      (SELECT count(*) FROM jsonb_array_elements(%s::jsonb) e WHERE e ->> 'idempotency_key' IS NULL),
                      (SELECT count(*) FROM jsonb_array_elements(%s::jsonb) e
                        WHERE e ->> 'idempotency_key' IS NOT NULL
                          AND NOT EXISTS (SELECT FROM sigledger.cost_quarantine q
                                           WHERE q.idempotency_key = left(e ->> 'idempotency_key', 200)))""",
            (top, batch, batch),
        ).fetchall()
        assert missing == 0 and keyless <= new <= quarantined, (new, keyless, missing, quarantined)
        changed = {"sigledger.cost_quarantine": new}
    after = dict((t, (n, h)) for t, n, h in conn.execute(fingerprint).fetchall())
    for table, (count, digest) in after.items():
        if table in changed:
            assert count == before[table][0] + changed[table], table
        else:
            assert (count, digest) == before[table], f"{function} changed {table}"
