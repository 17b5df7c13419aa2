"""The checked-in monitoring: Prometheus alert rules (promtool check rules, promtool test rules) and the Grafana
dashboard (valid PromQL, and only metrics that sigledger exports)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sigledger.core.metrics import REGISTRY
from sigledger.reports.exporter import DB_METRICS, OUTBOX_METRICS

from tests.reports.helpers import ROOT

RULES = ROOT / "monitoring" / "prometheus" / "sigledger-rules.yml"
RULE_TESTS = ROOT / "monitoring" / "prometheus" / "sigledger-rules.test.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "sigledger.json"
NAME = re.compile(r"\bsigledger_[a-z_]+\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool not found: install the Debian package prometheus (scripts/install-system-deps.sh)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, check=False)


def exported_names() -> set[str]:
    """Every sample name sigledger exports: the database exporter's gauges and the in-process metrics."""
    names = (
        set(DB_METRICS) | set(OUTBOX_METRICS) | {"sigledger_database_up", "sigledger_scrape_duration_seconds"}
    )
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.describe():  # type: ignore[attr-defined]
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
                family.type, ("",)
            )
            names |= {family.name + s for s in suffixes}
    return names


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def test_alert_rules_and_dashboard_use_only_exported_metrics() -> None:
    known = exported_names()
    used = set(NAME.findall(RULES.read_text())) | {n for e in _dashboard_exprs() for n in NAME.findall(e)}
    assert used, "no sigledger metric referenced"
    unknown = sorted(used - known)
    assert not unknown, f"metrics that sigledger does not export: {unknown}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query becomes a recording rule (Grafana's $__rate_interval replaced), checked by promtool."""
    exprs = _dashboard_exprs()
    assert len(exprs) >= 20
    rules: dict[str, Any] = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("key", ["title", "uid", "panels", "templating"])
def test_dashboard_is_importable(key: str) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash[key]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
