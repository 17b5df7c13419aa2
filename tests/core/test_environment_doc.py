"""docs/environment.md lists every SIGLEDGER_* environment variable the package reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_environment_variable_of_the_package_is_documented() -> None:
    used = {
        name
        for path in (ROOT / "harness" / "sigledger").rglob("*.py")
        for name in re.findall(r"\bSIGLEDGER_[A-Z0-9_]+\b", path.read_text())
    }
    documented = set(re.findall(r"`(SIGLEDGER_[A-Z0-9_]+)`", (ROOT / "docs" / "environment.md").read_text()))
    assert used, "no SIGLEDGER_* variable found: the scan is wrong"
    assert sorted(used - documented) == []
