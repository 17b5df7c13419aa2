"""Helpers for the migration runner's tests: fixture migration sets, the CLI, catalog snapshots."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from sigledger.cli import main
from sigledger.migrate import Migrator, Settings

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FixtureSet:
    """A copy of a fixture migration set in a temporary directory (tests may edit it)."""

    root: Path

    @property
    def migrations(self) -> Path:
        return self.root / "migrations"

    @property
    def functions(self) -> Path:
        return self.root / "functions"

    def migrator(self, dsn: str, log: list[str] | None = None, **settings: Any) -> Migrator:
        return Migrator(
            dsn,
            migrations=self.migrations,
            functions=self.functions,
            settings=Settings(**settings),
            log=log.append if log is not None else None,
        )


def fixture_set(name: str, tmp_path: Path) -> FixtureSet:
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    (target / "migrations").mkdir(exist_ok=True)
    return FixtureSet(target)


def cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch | None = None, fx: FixtureSet | None = None
) -> Result:
    """Run `sigledger ...` in-process (click's CliRunner), pointed at a fixture set when one is given."""
    if fx is not None:
        assert monkeypatch is not None
        monkeypatch.setattr("sigledger.migrate.runner.migrations_dir", lambda: fx.migrations)
        monkeypatch.setattr("sigledger.migrate.runner.functions_dir", lambda: fx.functions)
    return CliRunner().invoke(main, args, catch_exceptions=False)


def cli_process(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `python -m sigledger ...` as a real process (the real migrations)."""
    return subprocess.run(
        [sys.executable, "-m", "sigledger", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "harness"), str(ROOT)])},
        timeout=600,
        **kwargs,
    )


def status_json(dsn: str, monkeypatch: pytest.MonkeyPatch, fx: FixtureSet) -> tuple[int, dict[str, Any]]:
    result = cli(["migrate", "status", "--json", "--dsn", dsn], monkeypatch, fx)
    return result.exit_code, json.loads(result.output)


def history(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('sigledger_meta.schema_history') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
            return []
        return conn.execute(
            "SELECT version, name, kind, status, statements, progress, transactional, checksum, last_error "
            "FROM sigledger_meta.schema_history ORDER BY version_key"
        ).fetchall()


def snapshot(dsn: str) -> dict[str, Any]:
    """What a read-only command must not change: user relations, functions, indexes and the history tables."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rels = conn.execute(
            """SELECT n.nspname, c.relname, c.relkind, c.oid::bigint
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
                ORDER BY 1, 2"""
        ).fetchall()
        attrs = conn.execute(
            """SELECT c.oid::bigint, a.attname, a.atttypid::bigint FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
                  AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, 2"""
        ).fetchall()
        procs = conn.execute(
            """SELECT p.oid::regprocedure::text, md5(p.prosrc) FROM pg_proc p
                 JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"""
        ).fetchall()
        namespaces = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1").fetchall()]
        meta: dict[str, Any] = {}
        if conn.execute("SELECT to_regclass('sigledger_meta.schema_history') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
            meta["history"] = conn.execute(
                "SELECT * FROM sigledger_meta.schema_history ORDER BY version_key"
            ).fetchall()
            meta["repeatables"] = conn.execute(
                "SELECT * FROM sigledger_meta.repeatable_history ORDER BY name"
            ).fetchall()
    return {"relations": rels, "attributes": attrs, "functions": procs, "namespaces": namespaces, **meta}


def applied_log(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT what FROM fx.applied_log ORDER BY at").fetchall()]


def index_state(dsn: str, schema: str, name: str) -> tuple[bool, bool, int] | None:
    """(listed by pg_indexes, pg_index.indisvalid, index oid) or None when absent."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            """SELECT EXISTS (SELECT FROM pg_indexes WHERE schemaname = %s AND indexname = %s),
                      i.indisvalid, c.oid::bigint
                 FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %s AND c.relname = %s""",
            (schema, name, schema, name),
        ).fetchone()
    return None if row is None else (bool(row[0]), bool(row[1]), int(row[2]))
