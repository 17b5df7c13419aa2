"""Schema dumps of the real migrations, and the clock they depend on.

The ledger's partitions (V4_004) follow the clock: the legacy partition ends at the first day of the month after
now() + 1 day when V4_004 runs, monthly partitions follow it up to three months ahead of that day, and
ensure_ledger_partitions (the sweep) adds the months that come within reach later. A test that compares a dump
taken before `down` + `up` with one taken after therefore sees the month change when the clock crosses the start
of a month (or the start of a month's last day) between the two, or between the session's template and the test.
The helpers below move that clock on purpose, so that a test shows it without waiting for a month boundary.
"""

from __future__ import annotations

import re
import subprocess

import psycopg

MONTHLY = re.compile(r"llm_cost_log_p(\d{4})(\d{2})(?!\d)")
ENTRY = re.compile(r"\n(?=--\n-- Name: )")  # pg_dump's header of each object
LEGACY_BOUND = re.compile(r"'(\d{4})-(\d{2})-01 00:00:00\+00'")


def raw_schema_dump(dsn: str) -> str:
    """pg_dump --schema-only of the schema sigledger, without the lines that differ in every dump."""
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--schema=sigledger", dsn], capture_output=True, text=True, check=True
    ).stdout
    lines = [
        line for line in out.splitlines() if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict"))
    ]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _month_start(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}-01 00:00:00+00"


def schema_dump(dsn: str) -> str:
    """The dump of the schema with the clock taken out of the ledger's partitions, everything else verbatim:
    - the legacy partition's cutoff (its CHECK and its bound) reads '<cutoff>';
    - each monthly partition's objects (table, comment, bound, primary key, indexes, triggers) are written once
      per distinct shape, with its name and its bounds as placeholders (`llm_cost_log_p<YYYYMM>`, '<from>',
      '<to>'), so a partition that differs from the others (a lost index or trigger, a wrong bound) shows;
    - which months have one is reduced to whether they follow the cutoff without a gap (how far ahead they
      reach is the clock's: V4_004 makes them up to three months ahead of its day, the sweep later ones).
    The parent, the legacy and DEFAULT partitions (where the rows of a round trip live) are compared whole."""
    body, footer, end = raw_schema_dump(dsn).partition("\n--\n-- PostgreSQL database dump complete")
    kept: list[str] = []
    shapes: dict[tuple[int, int], list[str]] = {}
    cutoff: tuple[int, int] | None = None
    for entry in ENTRY.split(body):
        named = {(int(y), int(m)) for y, m in MONTHLY.findall(entry)}
        if len(named) == 1:  # (an object of two monthly partitions, which none is, would stay verbatim)
            ((year, month),) = named
            after = (year + month // 12, month % 12 + 1)
            shape = MONTHLY.sub("llm_cost_log_p<YYYYMM>", entry)
            shape = shape.replace(_month_start(year, month), "<from>").replace(_month_start(*after), "<to>")
            shapes.setdefault((year, month), []).append(shape)
            continue
        lines = entry.split("\n")
        for i, line in enumerate(lines):
            if (
                "llm_cost_log_legacy_range" in line
                or "ATTACH PARTITION sigledger.llm_cost_log_legacy FOR" in line
            ):
                bound = LEGACY_BOUND.search(line)
                if bound:
                    cutoff = (int(bound[1]), int(bound[2]))
                    lines[i] = LEGACY_BOUND.sub("'<cutoff>'", line)
        kept.append("\n".join(lines))
    if shapes or cutoff:
        offsets = [(y - cutoff[0]) * 12 + m - cutoff[1] for y, m in sorted(shapes)] if cutoff else []
        if offsets and offsets == list(range(len(offsets))):
            months = "one for every month from the cutoff on, without a gap"
        else:  # none, a gap, or no legacy partition: shown as they are
            months = f"{sorted(shapes)} (cutoff {cutoff})"
        kept.append(f"--\n-- monthly partitions of llm_cost_log: {months}\n")
        for shape in sorted({"\n".join(parts) for parts in shapes.values()}):
            kept.append("--\n-- the objects of a monthly partition:\n" + shape)
    return "\n".join(kept) + footer + end


def sweep_of_the_next_month(dsn: str) -> None:
    """The partition that the sweep (ensure_ledger_partitions(3)) creates once the clock is in the next month:
    the one four months ahead of the current one."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        created = conn.execute("SELECT sigledger.ensure_ledger_partitions(4)").fetchone()
    assert created is not None and created[0] >= 1, created


def built_a_month_earlier(dsn: str) -> None:
    """Rearranges the partitions of a database that V4_004 built (and no sweep since) into what V4_004 builds
    one month earlier: the legacy cutoff one month earlier, the month between the two cutoffs a partition of its
    own (made by _ensure_ledger_partitions), no partition for the last month (the earlier clock did not reach
    it): both boundaries' changes at once. The rows must all sit before the earlier cutoff (a template's ledger
    is empty). Should a month have started since the database was built, after the start of its last day (a
    session of more than a day), its layout already is an earlier clock's, and it is left as it is."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(
            """DO $$
            DECLARE
                v_cutoff timestamptz := sigledger._ledger_legacy_cutoff();
                v_earlier timestamptz := ((v_cutoff AT TIME ZONE 'UTC') - interval '1 month') AT TIME ZONE 'UTC';
                -- months from the current one to the earlier cutoff's: 0 or 1, or -1 when that month is over
                v_ahead integer := (extract(year FROM age(v_earlier AT TIME ZONE 'UTC',
                                                          date_trunc('month', now() AT TIME ZONE 'UTC'))) * 12
                                    + extract(month FROM age(v_earlier AT TIME ZONE 'UTC',
                                                             date_trunc('month', now() AT TIME ZONE 'UTC'))))::int;
                v_last text;
            BEGIN
                IF v_ahead < 0 THEN
                    RETURN;
                END IF;
                SELECT max(c.relname) INTO STRICT v_last
                  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass AND c.relname ~ '^llm_cost_log_p[0-9]{6}$';
                EXECUTE format('DROP TABLE sigledger.%I', v_last);
                ALTER TABLE sigledger.llm_cost_log DETACH PARTITION sigledger.llm_cost_log_legacy;
                ALTER TABLE sigledger.llm_cost_log_legacy DROP CONSTRAINT llm_cost_log_legacy_range;
                EXECUTE format('ALTER TABLE sigledger.llm_cost_log_legacy ADD CONSTRAINT llm_cost_log_legacy_range '
                               'CHECK (created_at < %L)', v_earlier);
                -- from the current month to the earlier cutoff's: only that one is missing
                IF sigledger._ensure_ledger_partitions(v_ahead) <> 1 THEN
                    RAISE EXCEPTION USING MESSAGE = format('expected one partition for the month from %s', v_earlier);
                END IF;
                EXECUTE format('ALTER TABLE sigledger.llm_cost_log ATTACH PARTITION sigledger.llm_cost_log_legacy '
                               'FOR VALUES FROM (MINVALUE) TO (%L)', v_earlier);
            END
            $$"""
        )
