"""Where things live: the SQL beside the package when installed (sigledger/sql), at the repository root in a
checkout (harness/sigledger is the package, sql/ its sibling two levels up); local state in .sigledger/."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # .../sigledger
# In a checkout the package sits at <repo>/harness/sigledger; installed, at site-packages/sigledger.
CHECKOUT_ROOT: Path | None = (
    PACKAGE_DIR.parent.parent if (PACKAGE_DIR.parent.parent / "pyproject.toml").is_file() else None
)


def sql_root() -> Path:
    candidates = [PACKAGE_DIR / "sql"]
    if CHECKOUT_ROOT is not None:
        candidates.insert(0, CHECKOUT_ROOT / "sql")
    for candidate in candidates:
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError(f"sigledger SQL files not found beside {PACKAGE_DIR}")


def migrations_dir() -> Path:
    return sql_root() / "migrations"


def functions_dir() -> Path:
    return sql_root() / "functions"


def repairs_dir() -> Path:
    """Data repairs run before the released migrations they guard (sigledger/migrate/repairs.py)."""
    return sql_root() / "repairs"


def state_dir() -> Path:
    """Local state of a checkout or working directory (local cluster, spool files, Neo4j)."""
    return (CHECKOUT_ROOT or Path.cwd()) / ".sigledger"
