"""Where the SQL lives: beside the package when installed (harness/sql), at the repo root in a checkout."""

from __future__ import annotations

from pathlib import Path


def sql_root() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "sql", here / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError(f"sigledger SQL files not found beside {here}")


def migrations_dir() -> Path:
    return sql_root() / "migrations"


def functions_dir() -> Path:
    return sql_root() / "functions"


def state_dir() -> Path:
    """Local state of a checkout or working directory (local cluster, spool files, Neo4j)."""
    here = Path(__file__).resolve().parent
    if (here.parent / "pyproject.toml").is_file():
        return here.parent / ".sigledger"
    return Path.cwd() / ".sigledger"
