"""What docs/deploying.md says installs sigledger really does: a wheel built from the checkout, installed
outside it, carries every SQL file (migrations, functions, repairs) and runs the migrations from there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sigledger.core.paths import functions_dir, migrations_dir, repairs_dir

from tests.migrate.helpers import ROOT


def test_a_wheel_installed_elsewhere_carries_the_sql_and_runs_the_migrations(
    tmp_path: Path, empty_db_dsn: str
) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("sigledger-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    for folder in (migrations_dir(), functions_dir(), repairs_dir()):
        shipped = sorted(p.name for p in (site / "sigledger" / "sql" / folder.name).glob("*.sql"))
        assert shipped == sorted(p.name for p in folder.glob("*.sql")), folder.name
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the installed copy, not the checkout (the dependencies come from the venv)
    env["PYTHONPATH"] = str(site)
    plan = subprocess.run(
        [sys.executable, "-m", "sigledger", "migrate", "plan", "--dsn", empty_db_dsn],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert plan.returncode == 0, plan.stderr
    assert "V3_000__baseline (transactional, 20 statements)" in plan.stdout.splitlines(), plan.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import sigledger.core.paths as p; print(p.repairs_dir())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert where.stdout.strip() == str(site / "sigledger" / "sql" / "repairs")
