"""A seed-era database: the V3_010 schema filled with the dirt the old application could write.

Everything here is accepted by the V3_010 schema (its CHECKs, keys and foreign keys) and refused, one way or
another, by a later release:
- aliases equal under lower(), on one entity and on two, exact repeats, and ones equal only once trimmed
  (V5_002's unique index entity_aliases_alias_lower_key);
- aliases with surrounding spaces (V5_001's entity_aliases_alias_trimmed);
- tombstoned entities (merged_into set, in a chain of two) that still hold aliases and signal links, without
  merged_at (V5_001's entities_tombstone_consistent), two of them linking the same signal;
- ledger rows with more than 1e12 tokens or created weeks ahead (V4_001's llm_cost_log_tokens_range and
  llm_cost_log_created_at_range);
- agents over their limit, with a zero limit, with untrimmed names; opportunities merged the V3 way.
The old CHECKs already refused negative, NaN and huge costs, so there are none; the foreign keys refused
orphans. `ledger_rows` plain ledger rows are written with one INSERT ... SELECT generate_series (a million in
seconds).

Two ways to build the schema: the runner (`up --to V3_010`) or psql (what a DBA who adopted sigledger by hand
did: each file run with psql, so V3_000's `SET LOCAL ROLE` did nothing and the tables belong to the psql login).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import psycopg
from sigledger.core.paths import migrations_dir
from sigledger.migrate import Migrator
from sigledger.migrate.files import discover_migrations, version_key

A = "00000000-0000-0000-0000-00000000000a"  # Acme
B = "00000000-0000-0000-0000-00000000000b"  # ACME Holdings, whose alias repeats Acme's name
C = "00000000-0000-0000-0000-00000000000c"  # Globex
T1 = "00000000-0000-0000-0000-0000000000f1"  # merged into A
T2 = "00000000-0000-0000-0000-0000000000f2"  # merged into T1 (a chain)
AGENT = "00000000-0000-0000-0000-0000000000a1"
S1 = "00000000-0000-0000-0000-0000000000e1"
S2 = "00000000-0000-0000-0000-0000000000e2"


@dataclass
class Dirt:
    """What fill() wrote, so that a test can account for every row after the upgrade."""

    aliases: int
    ledger: int
    entities: int
    links: int


def build_with_runner(dsn: str) -> None:
    Migrator(dsn).up(to="V3_010")


def build_with_psql(dsn: str) -> None:
    """V3_000 .. V3_010 applied file by file with psql (no transaction wrapper, as a DBA would)."""
    for migration in discover_migrations(migrations_dir()):
        if migration.key > version_key("3_010"):
            break
        out = subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(migration.up.path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr


def fill(dsn: str, ledger_rows: int = 1000) -> Dirt:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(
            """INSERT INTO sigledger.entities (id, name, updated_at) VALUES
                   (%(a)s, 'Acme', now() - interval '30 days'), (%(b)s, 'ACME Holdings', now() - interval '20 days'),
                   (%(c)s, 'Globex', now() - interval '10 days')""",
            {"a": A, "b": B, "c": C},
        )
        # tombstones the old code wrote: merged_into only (T2 -> T1 -> A), aliases and links left behind
        conn.execute(
            """INSERT INTO sigledger.entities (id, name, merged_into, updated_at) VALUES
                   (%(t1)s, 'Acme Old', %(a)s, timestamptz '2024-05-01 12:00+00'),
                   (%(t2)s, 'Acme Older', %(t1)s, timestamptz '2024-04-01 12:00+00')""",
            {"t1": T1, "t2": T2, "a": A},
        )
        aliases = [
            (A, "Acme", "2024-01-01"),
            (A, "acme", "2024-01-02"),  # same entity, same name but for case
            (A, "Acme", "2024-01-03"),  # the very same alias again
            (
                B,
                "ACME",
                "2024-02-01",
            ),  # another entity under the same name (a decision: quarantined, later one)
            (B, "ACME Holdings", "2024-02-01"),
            (C, "  Globex ", "2024-03-01"),  # untrimmed
            (C, "globex", "2024-03-02"),  # equal to the one above only once trimmed
            (C, "Initech  ", "2024-03-03"),  # untrimmed, unique
            (T1, "Acme Old", "2024-04-01"),  # on a tombstone: moves to A
            (T2, "acme", "2024-04-02"),  # on a tombstone, and a repeat of A's name
        ]
        for entity, alias, at in aliases:
            conn.execute(
                "INSERT INTO sigledger.entity_aliases (canonical_entity_id, alias, created_at) VALUES (%s, %s, %s)",
                (entity, alias, at),
            )
        conn.execute(
            """INSERT INTO sigledger.signals (id, source, external_id, occurred_at, content) VALUES
                   (%(s1)s, ' rss ', 'item-1', now() - interval '3 days', 'Acme buys Globex'),
                   (%(s2)s, 'rss', 'item-2', now() - interval '2 days', 'Acme again')""",
            {"s1": S1, "s2": S2},
        )
        links = [
            (S1, A, "Acme"),
            (S1, T1, " Acme Old "),
            (S1, C, "Globex"),
            (S2, T1, "Acme Old"),
            (S2, T2, "acme"),
        ]
        for signal, entity, mention in links:
            conn.execute(
                "INSERT INTO sigledger.signal_entities (signal_id, entity_id, mention) VALUES (%s, %s, %s)",
                (signal, entity, mention),
            )
        conn.execute(
            """INSERT INTO sigledger.opportunities (id, title, status, merged_into, merged_at) VALUES
                   ('00000000-0000-0000-0000-0000000000d1', 'Acme deal', 'open', NULL, NULL),
                   ('00000000-0000-0000-0000-0000000000d2', 'Acme deal (dup)', 'merged',
                    '00000000-0000-0000-0000-0000000000d1', now() - interval '1 day')"""
        )
        conn.execute(
            """INSERT INTO sigledger.agent_registry (id, name, budget_limit_usd, current_cost_usd) VALUES
                   (%s, 'agent-1', 10, 12.5), (gen_random_uuid(), '  agent-2 ', 0, 3),
                   (gen_random_uuid(), 'agent-3', 100, 0)""",
            (AGENT,),
        )
        conn.execute(
            """INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, tokens_input,
                   tokens_output, cost_usd, created_at)
               SELECT 'seed-' || g, %s, 'gpt-4o', 'openai', 100 + g %% 900, 20 + g %% 300, (g %% 1000) / 100000.0,
                      now() - interval '400 days' + g * (interval '399 days' / %s)
                 FROM generate_series(1, %s) g""",
            (AGENT, ledger_rows, ledger_rows),
        )
        conn.execute(
            """INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, tokens_input,
                   tokens_output, cost_usd, created_at) VALUES
                   ('seed-huge-1', %(a)s, 'gpt-4o', 'openai', 2000000000000, 0, 1, now() - interval '5 days'),
                   ('seed-huge-2', %(a)s, 'gpt-4o', 'openai', 5, 3000000000000, 2, now() - interval '4 days'),
                   ('seed-future', %(a)s, 'gpt-4o', 'openai', 5, 5, 0.5, now() + interval '30 days')""",
            {"a": AGENT},
        )
    return Dirt(aliases=len(aliases), ledger=ledger_rows + 3, entities=5, links=len(links))
