"""A row named by its id is found by its primary key, however many rows a partial index holds and whatever the
statistics say: a reservation (settle, release, a cost under its key), an outbox row (_graph_fail).

`budget_reservation_open_expires_idx` indexes the open reservations (expire_reservations' sweep). A statement
`WHERE id = $1 AND state = 'open'` matches its predicate, so the planner may answer it by scanning that whole
index and filtering on id, and it does whenever the statistics show the index nearly empty: after a VACUUM or
ANALYZE at a quiet moment (no open reservation), every settle and release then reads every open reservation
(and every index entry that a settlement left dead until the next vacuum): O(open reservations) per call,
O(n^2) for a burst. Measured on the bench cluster: 787 buffers for the settling statement with 4,200 open
reservations; by the primary key, 3 for the reservation row.

The test puts a database in that state (statistics taken with no open reservation, then 200 and 6,200
opened) and counts the buffers each call touches (EXPLAIN ANALYZE BUFFERS of the call counts its nested
statements): it must not grow with the open reservations. A count, not a duration.

The same holds for tombstones: `entities_merged_into_idx` and `opportunities_merged_into_idx` index the merged
rows (`WHERE merged_into IS NOT NULL`), and a statement that names entities or opportunities by id and asks
whether they are tombstones matched that predicate: with statistics taken before any merge, each call scanned
every tombstone (the backstop triggers of every link and alias, the merges' tombstone check, the graph
snapshot's loser search, once per row of the batch, and _lock_live_entities' chain walk). So did ingest_signals'
`WHERE id = ANY (<the entities it created>)` when it created none: an empty list is false, which implies any
predicate.

An agent's open reservations (budget_status's count, open_reservations of one agent) were read the same way:
`agent_id = $1 AND state = 'open'` by a scan of every agent's open reservations with the agent as a filter.
Those reads are worth an index (V8_102: the agent's open reservations in expiry order), and open_reservations
names the agent in a statement of its own, so that its generic plan can use it. So were an agent's overruns
(overrun_report of one agent: every agent's overruns of the range, the agent a filter), now read from an index of
their own (V8_105) by a statement of their own. And the dead outbox rows (`idx_outbox_dead`): _graph_dead_retry
and _graph_dead_purge given ids scanned every dead row.

And for the ledger: a replay (record_costs, record_cost) finds the stored row of a key by (id, created_at). With an
index on created_at alone the planner may answer that by it, id only a filter (a cost tie with the partition's
primary key; the order of the indexes decides, in the legacy partition for the created_at one), and every row of a
record_costs batch shares one created_at: each lookup read the whole batch, a replay was O(batch^2). V8_101 made
that index (created_at, id). A row named by its id alone is looked for partition by partition (the ledger is
partitioned by month): a cost recorded under a reservation's key after its hold was gone read its row after a
probe of every month before the current one; named by (id, created_at) as values, only its partition is read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from statistics import median
from typing import Any
from uuid import UUID

import psycopg
import pytest

FEW, MANY = 200, 6000


def buffers(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> int:
    plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params).fetchone()[0]  # type: ignore[index]
    top = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def reserve(conn: psycopg.Connection[Any], agent: str, n: int) -> list[int]:
    return [
        int(r[0])
        for r in conn.execute(
            "SELECT r.reservation_id FROM generate_series(1, %s) g,"
            " LATERAL sigledger.reserve_budget(%s, 0.01 + 0 * g) r ORDER BY 1",
            (n, agent),
        ).fetchall()
    ]


CALLS: dict[str, Callable[[str, int], tuple[str, tuple[Any, ...]]]] = {
    "settle_budget": lambda agent, rid: ("SELECT * FROM sigledger.settle_budget(%s, 0.01)", (rid,)),
    "release_budget": lambda agent, rid: ("SELECT sigledger.release_budget(%s)", (rid,)),
    "settle_budgets": lambda agent, rid: (
        "SELECT * FROM sigledger.settle_budgets(%s::jsonb)",
        (json.dumps([{"reservation_id": rid, "actual_usd": "0.01"}]),),
    ),
    # a cost recorded under the reservation's own key settles it (131_reservation_settle.sql, mode 'record')
    "record_cost": lambda agent, rid: (
        "SELECT sigledger.record_cost(%s, %s::uuid, 'm', 'p', 1, 1, 0.01)",
        (f"reservation:{rid}", agent),
    ),
}


def per_call(dsn: str, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
    """Buffers of each statement but the first, run in a new session (the first compiles the functions,
    reading the catalogs). The calls plan with the statistics of the moment: the first five with the
    parameters' values, the later ones maybe with the generic plan; both are measured."""
    with psycopg.connect(dsn, autocommit=True) as app:
        return [buffers(app, sql, params) for sql, params in statements][1:]


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_reservation_is_found_by_its_key_not_by_the_open_ones(db_dsn: str, call: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE sigledger.budget_reservation SET (autovacuum_enabled = false)")
        agent = str(conn.execute("SELECT sigledger.create_agent('plans', 1000000)").fetchone()[0])  # type: ignore[index]
        # statistics taken while no reservation is open: the partial index looks empty to the planner
        conn.execute("SELECT sigledger.release_budget(%s)", (reserve(conn, agent, 1)[0],))
        conn.execute("VACUUM ANALYZE sigledger.budget_reservation")
        few = reserve(conn, agent, FEW)
        before = per_call(db_dsn, [CALLS[call](agent, rid) for rid in few[:9]])
        many = reserve(conn, agent, MANY)
        after = per_call(db_dsn, [CALLS[call](agent, rid) for rid in many[:9]])
        # the calls did what they say (the counts are of real work)
        done = few[:9] + many[:9]
        states = conn.execute(
            "SELECT array_agg(DISTINCT state) FROM sigledger.budget_reservation WHERE id = ANY (%s)", (done,)
        ).fetchone()[0]  # type: ignore[index]
        assert states == (["released"] if call == "release_budget" else ["settled"])
        status = conn.execute(
            "SELECT sum(spent_usd), sum(reserved_usd) FROM sigledger.budget_status(%s::uuid)", (agent,)
        ).fetchone()
        spent = Decimal("0") if call == "release_budget" else Decimal("0.18")
        assert status == (spent, Decimal("0.01") * (FEW + MANY - 18))
    # the work of a call does not grow with the open reservations (a scan of them: ~25 buffers per 1,000)
    assert median(after) <= median(before) + 10, (
        f"{call}: buffers per call with {FEW} open {before}, {FEW + MANY} {after}"
    )


def test_a_failed_outbox_row_is_found_by_its_key_not_by_the_backlog(db_dsn: str) -> None:
    """idx_outbox_claimable indexes the live outbox rows (the claim order). _graph_fail's `id = ANY (ids) AND
    dead_at IS NULL` matched its predicate: with statistics taken on an empty outbox, each call scanned the whole
    backlog (a poison batch while a backlog drains)."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE sigledger.outbox SET (autovacuum_enabled = false)")

        def enqueue(n: int) -> list[int]:
            return [
                int(r[0])
                for r in conn.execute(
                    "INSERT INTO sigledger.outbox (aggregate_type, aggregate_id, event_type)"
                    " SELECT 'signal', gen_random_uuid(), 'signal.upserted' FROM generate_series(1, %s) RETURNING id",
                    (n,),
                ).fetchall()
            ]

        def fail(ids: list[int]) -> list[int]:
            return per_call(
                db_dsn,
                [("SELECT * FROM sigledger._graph_fail(%s::bigint[], 'bad row', 10)", ([i],)) for i in ids],
            )

        # statistics taken after a drain: a backlog projected (acknowledged rows are deleted), then vacuumed
        conn.execute("DELETE FROM sigledger.outbox WHERE id = ANY (%s)", (enqueue(MANY),))
        conn.execute("VACUUM ANALYZE sigledger.outbox")
        few = enqueue(FEW)
        before = fail(few[:9])
        many = enqueue(MANY)
        after = fail(many[:9])
        attempts = conn.execute(
            "SELECT array_agg(DISTINCT attempts) FROM sigledger.outbox WHERE id = ANY (%s)",
            (few[:9] + many[:9],),
        ).fetchone()[0]  # type: ignore[index]
        assert attempts == [1]
    assert median(after) <= median(before) + 10, (
        f"buffers per call with {FEW} live rows {before}, {FEW + MANY} {after}"
    )


AGENT_CALLS: dict[str, tuple[str, Callable[[list[Any]], Any]]] = {
    # the agent's count of open reservations (one column of each level's row)
    "budget_status": (
        "SELECT * FROM sigledger.budget_status(%s::uuid)",
        lambda rows: sorted({r[-1] for r in rows}),
    ),
    "open_reservations": (
        "SELECT * FROM sigledger.open_reservations(%s::uuid)",
        lambda rows: sorted(r[0] for r in rows),
    ),
}


def agent_and_others(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """The agent whose reads are measured and another whose rows fill the indexes; budget_reservation left to
    the test's statistics (no autovacuum)."""
    conn.execute("ALTER TABLE sigledger.budget_reservation SET (autovacuum_enabled = false)")
    agent, others = (
        str(conn.execute("SELECT sigledger.create_agent(%s, 1000000)", (name,)).fetchone()[0])  # type: ignore[index]
        for name in ("plans", "plans others")
    )
    return agent, others


@pytest.mark.parametrize("call", sorted(AGENT_CALLS))
def test_an_agents_open_reservations_are_read_by_the_agent_not_from_all_open_ones(
    db_dsn: str, call: str
) -> None:
    """An agent's open reservations (budget_status's count, open_reservations of one agent) are read from the
    agent's own entries: `agent_id = $1 AND state = 'open'` was answered, with statistics taken at a quiet
    moment, by a scan of budget_reservation_open_expires_idx (every agent's open reservations) filtered on the
    agent: O(open reservations of all agents) per call."""
    sql, result = AGENT_CALLS[call]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        agent, others = agent_and_others(conn)
        # statistics taken while no reservation is open: the partial indexes look empty to the planner
        conn.execute("SELECT sigledger.release_budget(%s)", (reserve(conn, agent, 1)[0],))
        conn.execute("VACUUM ANALYZE sigledger.budget_reservation")
        mine = reserve(conn, agent, 5)
        phases = []
        for n in (FEW, MANY):
            reserve(conn, others, n)
            # the calls did what they say (the counts are of real work)
            expected = [len(mine)] if call == "budget_status" else mine
            assert result(conn.execute(sql, (agent,)).fetchall()) == expected
            phases.append(per_call(db_dsn, [(sql, (agent,))] * 10))
    before, after = phases
    # the work of a call does not grow with the other agents' open reservations
    assert median(after) <= median(before) + 10, (
        f"{call}: buffers per call with {FEW} open {before}, {FEW + MANY} {after}"
    )


def overruns(conn: psycopg.Connection[Any], agent: str, n: int) -> list[int]:
    """n reservations of agent settled above their estimate (0.01 held, 0.02 spent)."""
    return [
        int(r[0])
        for r in conn.execute(
            "SELECT s.reservation_id FROM unnest(%s::bigint[]) r(id),"
            " LATERAL sigledger.settle_budget(r.id, 0.02) s ORDER BY 1",
            (reserve(conn, agent, n),),
        ).fetchall()
    ]


def test_an_agents_overruns_are_read_by_the_agent_not_from_all_overruns(db_dsn: str) -> None:
    """overrun_report of one agent: `overrun_usd > 0 AND closed_at in the range AND (p_agent_id IS NULL OR
    agent_id = p_agent_id)`. That test of the agent keeps every plan (the generic one always) off an index on
    the agent: the range was read from budget_reservation_overrun_closed_idx (every agent's overruns), the
    agent a filter: O(overruns of all agents in the range) per call."""
    sql = "SELECT * FROM sigledger.overrun_report(now() - interval '1 hour', now() + interval '1 hour', %s::uuid)"
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        agent, others = agent_and_others(conn)
        # statistics taken before any overrun (a settlement within its estimate): the partial index of the
        # overruns looks empty to the planner
        conn.execute("SELECT * FROM sigledger.settle_budget(%s, 0.01)", (reserve(conn, agent, 1)[0],))
        conn.execute("VACUUM ANALYZE sigledger.budget_reservation")
        mine = overruns(conn, agent, 5)
        phases = []
        for n in (FEW, MANY):
            overruns(conn, others, n)
            # the call does what it says (the counts are of real work)
            rows = conn.execute(sql, (agent,)).fetchall()
            assert sorted(r[0] for r in rows) == mine and {r[1] for r in rows} == {UUID(agent)}
            phases.append(per_call(db_dsn, [(sql, (agent,))] * 10))
    before, after = phases
    # the work of a call does not grow with the other agents' overruns
    assert median(after) <= median(before) + 10, (
        f"overrun_report: buffers per call with {FEW} overruns of others {before}, {FEW + MANY} {after}"
    )


def test_dead_outbox_rows_named_by_id_are_found_by_their_key_not_by_the_dead_ones(db_dsn: str) -> None:
    """idx_outbox_dead indexes the dead outbox rows. _graph_dead_retry and _graph_dead_purge given ids tested
    `dead_at IS NOT NULL AND id = ANY (ids)`, which matches its predicate: with statistics taken before any row
    died, each call scanned every dead row (an operator retrying or purging a few of a large dead set)."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE sigledger.outbox SET (autovacuum_enabled = false)")

        def dead(n: int) -> list[int]:
            return [
                int(r[0])
                for r in conn.execute(
                    "INSERT INTO sigledger.outbox (aggregate_type, aggregate_id, event_type, attempts, last_error,"
                    " dead_at) SELECT 'signal', gen_random_uuid(), 'signal.upserted', 10, 'bad row',"
                    " clock_timestamp() FROM generate_series(1, %s) RETURNING id",
                    (n,),
                ).fetchall()
            ]

        # statistics taken with live rows and none dead: idx_outbox_dead looks empty to the planner
        conn.execute(
            "INSERT INTO sigledger.outbox (aggregate_type, aggregate_id, event_type)"
            " SELECT 'signal', gen_random_uuid(), 'signal.upserted' FROM generate_series(1, 1000)"
        )
        conn.execute("VACUUM ANALYZE sigledger.outbox")
        phases = []
        for n in (FEW, MANY):
            ids = dead(n)
            retried = per_call(
                db_dsn, [("SELECT sigledger._graph_dead_retry(%s::bigint[])", ([i],)) for i in ids[:10]]
            )
            purged = per_call(
                db_dsn, [("SELECT sigledger._graph_dead_purge(%s::bigint[])", ([i],)) for i in ids[10:20]]
            )
            # the calls did what they say (the counts are of real work)
            rows = conn.execute(
                "SELECT count(*) FILTER (WHERE dead_at IS NULL AND attempts = 0), count(*)"
                " FROM sigledger.outbox WHERE id = ANY (%s)",
                (ids[:20],),
            ).fetchone()
            assert rows == (10, 10)
            phases.append((retried, purged))
    (retry_before, purge_before), (retry_after, purge_after) = phases
    grew = median(retry_after) > median(retry_before) + 10 or median(purge_after) > median(purge_before) + 10
    assert not grew, (
        f"buffers per call with {FEW} dead rows: retry {retry_before}, purge {purge_before};"
        f" {FEW + MANY}: retry {retry_after}, purge {purge_after}"
    )


class Live:
    """Rows a phase's calls work on, made after the statistics were taken: live entities (each with its name
    as alias), live opportunities, signals, and the tombstones of that phase."""

    def __init__(self, conn: psycopg.Connection[Any], tag: str, tombstones: list[Any]) -> None:
        self.tag = tag
        self.names = [f"{tag} entity {i}" for i in range(20)]
        self.entities = [
            conn.execute("SELECT sigledger.create_entity(%s)", (n,)).fetchone()[0]  # type: ignore[index]
            for n in self.names
        ]
        self.opportunities = [
            conn.execute("SELECT sigledger.create_opportunity(%s)", (f"{tag} opportunity {i}",)).fetchone()[0]  # type: ignore[index]
            for i in range(20)
        ]
        batch = [
            {"source": "plans", "external_id": f"{tag} signal {i}", "occurred_at": "2026-01-01T00:00:00Z"}
            for i in range(10)
        ]
        self.signals = [
            r[0]
            for r in conn.execute(
                "SELECT signal_id FROM sigledger.ingest_signals(%s::jsonb) ORDER BY item",
                (json.dumps(batch),),
            ).fetchall()
        ]
        self.tombstones = tombstones


def merge_many(conn: psycopg.Connection[Any], n: int) -> list[Any]:
    """n entity and n opportunity tombstones, made by merges (at most 1000 sources a call); returns the
    entity tombstones."""
    done: list[Any] = []
    for kind, table, column in (
        ("entities", "entities", "name"),
        ("opportunities", "opportunities", "title"),
    ):
        left = n
        while left > 0:
            k = min(left, 1000)
            ids = [
                r[0]
                for r in conn.execute(
                    f"INSERT INTO sigledger.{table} ({column}) SELECT 'tombstone ' || g"
                    " FROM generate_series(0, %s) g RETURNING id",
                    (k,),
                ).fetchall()
            ]
            conn.execute(f"SELECT * FROM sigledger.merge_{kind}(%s, %s::uuid[])", (ids[0], ids[1:]))
            if kind == "entities":
                done += ids[1:]
            left -= k
    return done


TOMBSTONE_CALLS: dict[str, Callable[[Live, int], tuple[str, tuple[Any, ...]]]] = {
    # an item naming two known entities: links land in signal_entities (its backstop trigger), and no entity
    # is created (`id = ANY ('{}')`, false, implies every index predicate: it was a scan of the tombstones)
    "ingest_signals": lambda live, k: (
        "SELECT * FROM sigledger.ingest_signals(%s::jsonb)",
        (
            json.dumps(
                [
                    {
                        "source": "plans",
                        "external_id": f"{live.tag} mention {k}",
                        "occurred_at": "2026-01-01T00:00:00Z",
                        "mentions": [live.names[2 * k], live.names[2 * k + 1]],
                    }
                ]
            ),
        ),
    ),
    "add_alias": lambda live, k: (
        "SELECT sigledger.add_alias(%s, %s)",
        (live.entities[k], f"{live.tag} alias {k}"),
    ),
    "link_signals": lambda live, k: (
        "SELECT * FROM sigledger.link_signals(%s, %s::uuid[])",
        (live.opportunities[k], [live.signals[k]]),
    ),
    "merge_entities": lambda live, k: (
        "SELECT * FROM sigledger.merge_entities(%s, %s::uuid[])",
        (live.entities[2 * k], [live.entities[2 * k + 1]]),
    ),
    "merge_opportunities": lambda live, k: (
        "SELECT * FROM sigledger.merge_opportunities(%s, %s::uuid[])",
        (live.opportunities[2 * k], [live.opportunities[2 * k + 1]]),
    ),
    # a batch of the sync worker: 20 entities and 20 opportunities
    "_graph_snapshot": lambda live, k: (
        "SELECT * FROM sigledger._graph_snapshot(%s::text[], %s::uuid[])",
        (["entity"] * 20 + ["opportunity"] * 20, live.entities + live.opportunities),
    ),
    # a key resolved to an entity merged meanwhile: the chain walk to its head
    "_lock_live_entities": lambda live, k: (
        "SELECT * FROM sigledger._lock_live_entities(%s::uuid[])",
        ([live.tombstones[k]],),
    ),
}


@pytest.mark.parametrize("call", sorted(TOMBSTONE_CALLS))
def test_entities_and_opportunities_are_found_by_their_key_not_by_the_tombstones(
    db_dsn: str, call: str
) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for table in ("entities", "opportunities"):
            conn.execute(f"ALTER TABLE sigledger.{table} SET (autovacuum_enabled = false)")
        # statistics taken before any merge (entities and opportunities, none merged): the partial indexes of
        # tombstones look empty to the planner
        conn.execute(
            "INSERT INTO sigledger.entities (name) SELECT 'early ' || g FROM generate_series(1, 1000) g"
        )
        conn.execute(
            "INSERT INTO sigledger.opportunities (title) SELECT 'early ' || g FROM generate_series(1, 1000) g"
        )
        conn.execute("VACUUM ANALYZE sigledger.entities, sigledger.opportunities")
        phases = []
        for tag, n in (("few", FEW), ("many", MANY)):
            live = Live(conn, tag, merge_many(conn, n))
            phases.append((live, per_call(db_dsn, [TOMBSTONE_CALLS[call](live, k) for k in range(9)])))
        # the calls did what they say (the counts are of real work)
        for live, _ in phases:
            if call == "ingest_signals":
                links = conn.execute(
                    "SELECT count(*) FROM sigledger.signal_entities WHERE entity_id = ANY (%s)",
                    (live.entities,),
                ).fetchone()[0]  # type: ignore[index]
                assert links == 18
            elif call == "add_alias":
                aliases = conn.execute(
                    "SELECT count(*) FROM sigledger.entity_aliases WHERE canonical_entity_id = ANY (%s)",
                    (live.entities,),
                ).fetchone()[0]  # type: ignore[index]
                assert aliases == 20 + 9
            elif call == "link_signals":
                links = conn.execute(
                    "SELECT count(*) FROM sigledger.opportunity_signals WHERE opportunity_id = ANY (%s)",
                    (live.opportunities,),
                ).fetchone()[0]  # type: ignore[index]
                assert links == 9
            elif call.startswith("merge_"):
                table = call.removeprefix("merge_")
                ids = live.entities if table == "entities" else live.opportunities
                merged = conn.execute(
                    f"SELECT count(*) FROM sigledger.{table} WHERE id = ANY (%s) AND merged_into IS NOT NULL",
                    (ids,),
                ).fetchone()[0]  # type: ignore[index]
                assert merged == 9
            elif call == "_graph_snapshot":
                states = conn.execute(
                    "SELECT array_agg(DISTINCT state) FROM sigledger._graph_snapshot(%s::text[], %s::uuid[])",
                    TOMBSTONE_CALLS[call](live, 0)[1],
                ).fetchone()[0]  # type: ignore[index]
                assert states == ["present"]
            else:
                heads = conn.execute(
                    "SELECT array_agg(DISTINCT l.head) FROM unnest(%s::uuid[]) t,"
                    " LATERAL sigledger._lock_live_entities(ARRAY[t]) l",
                    (live.tombstones[:9],),
                ).fetchone()[0]  # type: ignore[index]
                assert len(heads) == 1 and heads[0] not in live.tombstones
    (_, before), (_, after) = phases
    # the work of a call does not grow with the tombstones (a scan of them: ~15 buffers per 1,000, per row)
    assert median(after) <= median(before) + 10, (
        f"{call}: buffers per call with {FEW} tombstones {before}, {FEW + MANY} {after}"
    )


# ---- the ledger: a replayed cost is found by its key, not by the rows that share its created_at ----------------

LEDGER_FEW, LEDGER_MANY = 500, 4000


def ledger_partitions(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'sigledger.llm_cost_log'::regclass"
        ).fetchall()
    ]


def current_month_partitioned(conn: psycopg.Connection[Any]) -> None:
    """Rearranges the (empty) ledger of a fresh database so that the current month has a monthly partition of
    its own, made by _ensure_ledger_partitions, as on a database upgraded months ago: the legacy partition's
    cutoff moved back to the start of the current month."""
    conn.execute(
        """DO $$
        DECLARE
            v_month timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
        BEGIN
            ALTER TABLE sigledger.llm_cost_log DETACH PARTITION sigledger.llm_cost_log_legacy;
            ALTER TABLE sigledger.llm_cost_log_legacy DROP CONSTRAINT llm_cost_log_legacy_range;
            EXECUTE format('ALTER TABLE sigledger.llm_cost_log_legacy ADD CONSTRAINT llm_cost_log_legacy_range '
                           'CHECK (created_at < %L)', v_month);
            PERFORM sigledger._ensure_ledger_partitions(2);
            EXECUTE format('ALTER TABLE sigledger.llm_cost_log ATTACH PARTITION sigledger.llm_cost_log_legacy '
                           'FOR VALUES FROM (MINVALUE) TO (%L)', v_month);
        END
        $$"""
    )


def ledger_batch(tag: str, agent: str, n: int) -> str:
    """n costs without created_at: record_costs gives them all the one now() of its call."""
    return json.dumps(
        [
            {
                "idempotency_key": f"{tag}-{i}",
                "agent_id": agent,
                "model": "m",
                "provider": "p",
                "cost_usd": "0.001",
            }
            for i in range(n)
        ]
    )


def ledger_with_history(conn: psycopg.Connection[Any], layout: str) -> tuple[str, str]:
    """An agent, and 3,000 ledger rows of distinct created_at (the costs of single calls) in the partition of
    the current month, statistics taken then (a quiet moment: no batch has shared a created_at yet). Returns
    the agent and that partition."""
    if layout == "monthly partition":
        current_month_partitioned(conn)
    for partition in ledger_partitions(conn):
        conn.execute(f"ALTER TABLE {partition} SET (autovacuum_enabled = false)")
    agent = str(conn.execute("SELECT sigledger.create_agent('ledger plans', 1000000)").fetchone()[0])  # type: ignore[index]
    conn.execute(
        """SELECT * FROM sigledger.record_costs((
               SELECT jsonb_agg(jsonb_build_object('idempotency_key', 'history-' || g, 'agent_id', %s::text,
                                                  'model', 'm', 'provider', 'p', 'cost_usd', '0.001',
                                                  'created_at', now() - g * interval '1 microsecond'))
                 FROM generate_series(1, 3000) g))""",
        (agent,),
    )
    conn.execute("ANALYZE sigledger.llm_cost_log")
    partition = conn.execute(
        "SELECT tableoid::regclass::text FROM sigledger.llm_cost_log WHERE idempotency_key = 'history-1'"
    ).fetchone()[0]  # type: ignore[index]
    return agent, str(partition)


LAYOUTS = ["legacy partition", "monthly partition"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_batch_replay_finds_each_row_by_its_key_not_by_the_batch(db_dsn: str, layout: str) -> None:
    """record_costs looks each key the ledger holds up by (id, created_at) (111_record_costs.sql, `stored`). A
    batch without created_at shares one now(), so all its rows have one created_at; answered by the index on
    created_at alone (with id only a filter, which the planner picks on a tie with the primary key), each
    lookup read the whole batch: a replay was O(batch^2) (8,000 rows: 4.79M buffers, 19.7 s). Its buffers per
    row must not grow with the batch."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        agent, partition = ledger_with_history(conn, layout)
        assert partition.endswith("_legacy") == (layout == "legacy partition"), partition
        per_row = {}
        for n in (LEDGER_FEW, LEDGER_MANY):
            batch = ledger_batch(f"batch{n}", agent, n)
            assert conn.execute("SELECT * FROM sigledger.record_costs(%s::jsonb)", (batch,)).fetchone() == (
                n,
                0,
                0,
            )
            warm = ledger_batch(f"batch{n}", agent, 1)  # (compiles the functions: a replay of one row)
            _, replay = per_call(
                db_dsn,
                [
                    ("SELECT * FROM sigledger.record_costs(%s::jsonb)", (warm,)),
                    ("SELECT * FROM sigledger.record_costs(%s::jsonb)", (warm,)),
                    ("SELECT * FROM sigledger.record_costs(%s::jsonb)", (batch,)),
                ],
            )
            per_row[n] = replay / n
        # the replays did what they say (every row a duplicate, nothing inserted twice)
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT created_at) FROM sigledger.llm_cost_log WHERE idempotency_key LIKE 'batch%%'"
        ).fetchone()
        assert rows == (LEDGER_FEW + LEDGER_MANY, 2)
        assert conn.execute("SELECT count(*) FROM sigledger.cost_quarantine").fetchone() == (0,)
    # ~17 buffers per row either way; with a scan of the batch per row: 53 and 321 (legacy partition)
    assert per_row[LEDGER_MANY] <= per_row[LEDGER_FEW] + 3, f"{layout}: replay buffers per row {per_row}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_single_replay_finds_its_row_by_its_key_not_by_its_batch(db_dsn: str, layout: str) -> None:
    """record_cost's replay (_cost_insert, 110_record_cost.sql) joins the ledger on (id, created_at): a key that
    a batch recorded read the whole batch."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        agent, _ = ledger_with_history(conn, layout)
        for n in (LEDGER_FEW, LEDGER_MANY):
            conn.execute(
                "SELECT * FROM sigledger.record_costs(%s::jsonb)", (ledger_batch(f"batch{n}", agent, n),)
            )

        def replays(n: int) -> list[int]:
            return per_call(
                db_dsn,
                [
                    (
                        "SELECT sigledger.record_cost(%s, %s::uuid, 'm', 'p', 0, 0, 0.001)",
                        (f"batch{n}-{k}", agent),
                    )
                    for k in range(10)
                ],
            )

        before, after = replays(LEDGER_FEW), replays(LEDGER_MANY)
        assert conn.execute(
            "SELECT count(*) FROM sigledger.llm_cost_log WHERE idempotency_key LIKE 'batch%%'"
        ).fetchone() == (LEDGER_FEW + LEDGER_MANY,)
    assert median(after) <= median(before) + 10, (
        f"{layout}: buffers per replay of a key of a {LEDGER_FEW}-row batch {before}, {LEDGER_MANY}-row {after}"
    )


# ---- the ledger's partitions: a stored row named by its key is read in its own partition ----------------------

HISTORY_MONTHS = 60


def ledger_history(conn: psycopg.Connection[Any], months: int, agent: str) -> None:
    """A database that has run for `months` months since V4_004: a monthly partition for each of them, made by
    _ensure_ledger_partitions in its month (here by hand, as it does: it only makes months ahead), each
    holding a cost (written directly: older than the API's backdate window), and the legacy partition's bound
    moved back to before them. The current month's partition exists (current_month_partitioned)."""
    conn.execute(
        f"""DO $$
        DECLARE
            v_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
            v_first timestamptz := (v_month - make_interval(months => {months})) AT TIME ZONE 'UTC';
            v_name text;
        BEGIN
            ALTER TABLE sigledger.llm_cost_log DETACH PARTITION sigledger.llm_cost_log_legacy;
            ALTER TABLE sigledger.llm_cost_log_legacy DROP CONSTRAINT llm_cost_log_legacy_range;
            EXECUTE format('ALTER TABLE sigledger.llm_cost_log_legacy ADD CONSTRAINT llm_cost_log_legacy_range '
                           'CHECK (created_at < %L)', v_first);
            FOR i IN 1 .. {months} LOOP
                v_name := 'llm_cost_log_p' || to_char(v_month - make_interval(months => i), 'YYYYMM');
                EXECUTE format('CREATE TABLE sigledger.%I PARTITION OF sigledger.llm_cost_log '
                               'FOR VALUES FROM (%L) TO (%L)', v_name,
                               (v_month - make_interval(months => i)) AT TIME ZONE 'UTC',
                               (v_month - make_interval(months => i - 1)) AT TIME ZONE 'UTC');
                EXECUTE format('ALTER TABLE sigledger.%I ADD CONSTRAINT %I PRIMARY KEY (id)', v_name, v_name || '_pkey');
            END LOOP;
            EXECUTE format('ALTER TABLE sigledger.llm_cost_log ATTACH PARTITION sigledger.llm_cost_log_legacy '
                           'FOR VALUES FROM (MINVALUE) TO (%L)', v_first);
        END
        $$"""
    )
    conn.execute(
        "INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd, charged_at,"
        " created_at)"
        " SELECT 'history-' || i, %s::uuid, 'm', 'p', 0.001, t.at, t.at FROM generate_series(1, %s) i,"
        " LATERAL (SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => i)"
        "                  + interval '1 day') AT TIME ZONE 'UTC' AS at) t",
        (agent, months),
    )


# a cost recorded under a reservation's own key after its hold is gone (expired or released: 131_reservation_
# settle.sql, mode 'record')
PARTITION_CALLS: dict[str, Callable[[str, int], tuple[str, tuple[Any, ...]]]] = {
    "record_cost": lambda agent, rid: (
        "SELECT sigledger.record_cost(%s, %s::uuid, 'm', 'p', 1, 1, 0.01)",
        (f"reservation:{rid}", agent),
    ),
    "record_costs": lambda agent, rid: (
        "SELECT * FROM sigledger.record_costs(%s::jsonb)",
        (
            json.dumps(
                [
                    {
                        "idempotency_key": f"reservation:{rid}",
                        "agent_id": agent,
                        "model": "m",
                        "provider": "p",
                        "input_tokens": 1,
                        "output_tokens": 1,
                        "cost_usd": "0.01",
                    }
                ]
            ),
        ),
    ),
}


def closed_reservations(conn: psycopg.Connection[Any], agent: str, n: int) -> list[int]:
    """n reservations whose hold is gone: every other one released, the others expired."""
    rids = [
        int(r[0])
        for r in conn.execute(
            "SELECT r.reservation_id FROM generate_series(1, %s) g,"
            " LATERAL sigledger.reserve_budget(%s, 0.01 + 0 * g, interval '1 microsecond') r ORDER BY 1",
            (n, agent),
        ).fetchall()
    ]
    for rid in rids[::2]:
        conn.execute("SELECT sigledger.release_budget(%s)", (rid,))
    conn.execute("SELECT sigledger.expire_reservations()")
    states = conn.execute(
        "SELECT array_agg(state ORDER BY id) FROM sigledger.budget_reservation WHERE id = ANY (%s)", (rids,)
    ).fetchone()[0]  # type: ignore[index]
    assert states == ["released", "expired"] * (n // 2), states
    return rids


# (a first record_cost under the key reaches neither read: its key is not stored yet)
@pytest.mark.parametrize(
    ("call", "replay"),
    [("record_cost", True), ("record_costs", False), ("record_costs", True)],
    ids=["record_cost replay", "record_costs", "record_costs replay"],
)
def test_a_stored_ledger_row_is_read_in_its_own_partition(db_dsn: str, call: str, replay: bool) -> None:
    """The ledger is partitioned by month of created_at (V4_004): a statement that names a ledger row by its id
    alone looks for it in every partition, in partition order (the legacy one, the months, DEFAULT), until it
    finds it, so a row of the current month was found after a probe of every month before it: its work grew
    with the months the database has run. A cost recorded under a reservation's key after its hold was gone
    read a row so twice: record_costs' test that it wrote the row (110_record_cost.sql), and
    _reservation_settle's read of the key's stored row on a replay (131_reservation_settle.sql). Named by
    (id, created_at) with created_at a value (the key registry's, or the one just written), the plan reads the
    row's partition only."""
    sql = PARTITION_CALLS[call]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        agent, past = (
            str(conn.execute("SELECT sigledger.create_agent(%s, 1000000)", (name,)).fetchone()[0])  # type: ignore[index]
            for name in ("partitions", "partitions history")
        )
        current_month_partitioned(conn)
        phases = {}
        for months in (0, HISTORY_MONTHS):
            if months:
                ledger_history(conn, months, past)
            rids = closed_reservations(conn, agent, 10)
            if replay:
                for rid in rids:
                    conn.execute(*sql(agent, rid))
            # the call does what it says (the counts are of real work): its answer on the first reservation
            answer = conn.execute(*sql(agent, rids[0])).fetchone()
            if call == "record_costs":
                assert answer == ((0, 1, 0) if replay else (1, 0, 0)), answer
            phases[len(ledger_partitions(conn))] = per_call(db_dsn, [sql(agent, rid) for rid in rids[1:]])
        current = conn.execute(
            "SELECT array_agg(DISTINCT tableoid::regclass::text), count(*), count(DISTINCT reservation_id),"
            " sum(cost_usd) FROM sigledger.llm_cost_log WHERE idempotency_key LIKE 'reservation:%%'"
        ).fetchone()
        month = conn.execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')").fetchone()[0]  # type: ignore[index]
        assert current == ([f"sigledger.llm_cost_log_p{month}"], 20, 20, Decimal("0.20")), current
        history = conn.execute(
            "SELECT count(DISTINCT tableoid) FROM sigledger.llm_cost_log WHERE idempotency_key LIKE 'history-%%'"
        ).fetchone()
        assert history == (HISTORY_MONTHS,)
        spent = conn.execute(
            "SELECT sum(spent_usd) FROM sigledger.budget_status(%s::uuid)", (agent,)
        ).fetchone()
        assert spent == (Decimal("0.20"),)
    (few, before), (many, after) = sorted(phases.items())
    # the work of a call does not grow with the months (a probe of each month's partition: ~1 buffer each)
    assert median(after) <= median(before) + 10, (
        f"{call}: buffers per call with {few} ledger partitions {before}, {many} {after}"
    )
