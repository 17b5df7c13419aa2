"""Benchmark of the text rules (issue 11; not a test): `make bench-text`.

What one call of the text functions costs on the server, against baselines measured in the same run:
- _text_arg(value, 'model', 200, 800): what the ledger's hot path now runs three times per cost (key, model,
  provider), against the check it replaced (the former _assert_text: NULL, btrim, length, as a PL/pgSQL
  function with its pinned search_path) and against an empty PL/pgSQL function with the same SET clause (the
  floor of any function call here);
- _text_key(name): what resolution computes per name, against the lower(btrim(name)) it replaced;
for ASCII values (the fast paths) and for names in other scripts. Each figure is the median of 5 rounds of a
server-side scan calling the function once per row (no client round trip), in microseconds per call.

Results: bench/results/text.json. The server is --dsn / SIGLEDGER_DSN (an admin connection string; a database
`sigledger_bench_text` is created there and dropped afterwards), or the local cluster of `sigledger db up`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "harness"), str(ROOT)]

from sigledger.core.localdb import LocalCluster  # noqa: E402
from sigledger.migrate import Migrator  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DB = "sigledger_bench_text"
ROWS = 100_000

BASELINES = """
CREATE FUNCTION pg_temp.old_assert_text(p_name text, p_value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = sigledger, pg_temp AS $$
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = format('%s must not be NULL', p_name);
    END IF;
    IF length(btrim(p_value)) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s must not be empty, got %L', p_name, p_value);
    END IF;
    IF length(p_value) > 200 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s must be at most 200 characters', p_name);
    END IF;
    RETURN p_value;
END $$;
CREATE FUNCTION pg_temp.empty(p_value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = sigledger, pg_temp AS $$ BEGIN RETURN p_value; END $$;
"""

DATA = {
    "ascii": "'gpt-4o-mini-2024-07-18 ' || g",
    "latin": "'Zürich Straße Müller ' || g",
    "greek": "'ΑΘΗΝΑ Ἀθῆναι ' || g",
    "cjk": "'東京都 株式会社 ' || g",
}

CASES = {
    "empty_plpgsql": "pg_temp.empty(s)",
    "old_assert_text": "pg_temp.old_assert_text('model', s)",
    "text_arg": "sigledger._text_arg(s, 'model', 200, 800)",
    "text_arg_key": "sigledger._text_arg(s, 'idempotency_key', 200, 800, 'key')",
    "lower_btrim": "lower(btrim(s))",
    "text_key": "sigledger._text_key(s)",
}


def admin_dsn(arg: str | None) -> str:
    dsn = arg or os.environ.get("SIGLEDGER_DSN")
    if dsn:
        return make_conninfo(dsn, dbname="postgres")
    cluster = LocalCluster.default()
    cluster.start()
    return cluster.dsn("postgres")


def per_call_us(conn: psycopg.Connection[Any], expr: str, table: str) -> float:
    started = time.perf_counter()
    conn.execute(f"SELECT count({expr}) FROM {table}")
    return (time.perf_counter() - started) * 1e6 / ROWS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn")
    args = parser.parse_args()
    admin = admin_dsn(args.dsn)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    dsn = make_conninfo(admin, dbname=DB)
    try:
        Migrator(dsn).up()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(BASELINES)
            for name, expr in DATA.items():
                conn.execute(
                    f"CREATE TEMP TABLE t_{name} AS SELECT {expr} AS s FROM generate_series(1, {ROWS}) g"
                )
            results: dict[str, dict[str, float]] = {}
            for data in DATA:
                rounds: dict[str, list[float]] = {case: [] for case in CASES}
                for _ in range(5):  # interleaved, so that load on the machine hits every case alike
                    for case, expr in CASES.items():
                        rounds[case].append(per_call_us(conn, expr, f"t_{data}"))
                results[data] = {case: round(statistics.median(v), 3) for case, v in rounds.items()}
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    ascii_ = results["ascii"]
    report = {
        "machine": platform.platform(),
        "rows_per_round": ROWS,
        "us_per_call": results,
        "ratios_ascii": {
            "text_arg_vs_old_assert_text": round(ascii_["text_arg"] / ascii_["old_assert_text"], 2),
            "text_arg_minus_empty_call_us": round(ascii_["text_arg"] - ascii_["empty_plpgsql"], 3),
            "text_key_vs_lower_btrim": round(ascii_["text_key"] / ascii_["lower_btrim"], 2),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "text.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
