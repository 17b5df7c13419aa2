"""The sync modules are generated from their async sources (tools/async_to_sync.py): a committed twin that
differs from what the generator produces now fails here (run `make sync-gen`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def _tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("async_to_sync", ROOT / "tools" / "async_to_sync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["async_to_sync"] = module
    spec.loader.exec_module(module)
    return module


TOOL = _tool()


@pytest.mark.parametrize(("src", "dst"), TOOL.PAIRS)
def test_generated_sync_twin_is_current(src: str, dst: str) -> None:
    expected = TOOL.generate(src, dst)
    actual = (TOOL.PKG / dst).read_text()
    assert actual == expected, f"sigledger/{dst} is stale: run `make sync-gen`"


def test_conversion_keeps_indentation_and_renames() -> None:
    source = (
        "async def f(db: AsyncDatabase) -> None:\n"
        "    async with db.transaction() as conn:\n"
        "        await conn.execute('SELECT 1')  # AsyncDatabase\n"
        "    x = [await g(i) for i in range(3)]\n"
    )
    out = TOOL.convert(source, "x.py")
    assert "def f(db: Database) -> None:\n    with db.transaction() as conn:\n" in out
    assert "        conn.execute('SELECT 1')  # Database\n" in out
    assert "x = [g(i) for i in range(3)]" in out
    assert "async" not in out.split("\n", 2)[2] and "await" not in out
