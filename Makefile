# sigledger: one target per command. `make test` runs everything CI runs; `make demo` the main job.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: help test lint pytest demo deps system-deps venv neo4j-up neo4j-down bench bench-budget bench-ledger \
        bench-budget-profile bench-budget-index-ab bench-ingest bench-graph bench-report bench-migrate bench-text \
        schema-dump api-docs pgtap isolation clean sync-gen bench-tracker bench-loop-lag

help:
	@echo "make test    install what is missing, then lint and run every test suite (what CI runs)"
	@echo "make demo    the main job on a throwaway local cluster"
	@echo "make lint | pytest | pgtap | isolation | schema-dump | bench | bench-report | neo4j-up | neo4j-down"

deps: system-deps venv

system-deps:
	@scripts/install-system-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

test: deps lint pytest

lint: venv
	$(VENV)/bin/ruff check harness tests bench tools
	$(VENV)/bin/ruff format --check harness tests bench tools
	$(VENV)/bin/mypy
	$(VENV)/bin/squawk --config .squawk.toml sql/migrations/*.sql

pytest: deps
	$(PY) -m pytest $(PYTEST_ARGS)

pgtap: deps
	$(PY) -m pytest tests/core/test_pgtap.py $(PYTEST_ARGS)

isolation: deps
	$(PY) -m pytest tests/core/test_isolation.py $(PYTEST_ARGS)

# The sync modules (db.py, ledger/client.py, ledger/tracker.py, budget/client.py, budget/guard.py,
# reports/client.py) from their async sources (a*.py); a test fails when they are stale.
sync-gen: venv
	$(PY) tools/async_to_sync.py

# Regenerate the committed generated files (net DDL, API reference) from a database built by the migrations.
schema-dump api-docs: deps
	$(PY) -m pytest tests/core/test_schema_dump.py tests/core/test_api_docs.py --regenerate -q

demo: deps
	$(VENV)/bin/sigledger demo

neo4j-up: deps
	$(PY) -m sigledger.graph.neo4j_server up

neo4j-down: deps
	$(PY) -m sigledger.graph.neo4j_server down

# Every benchmark, then the README performance table from bench/results/*.json.
bench: bench-budget bench-ingest bench-graph bench-report bench-text bench-tracker bench-loop-lag bench-migrate
	$(PY) bench/report.py

bench-budget: deps
	$(PY) bench/budget/run.py

# the ledger's batch path alone (record_costs vs the bare statement vs COPY); bench-budget includes it
bench-ledger: deps
	$(PY) bench/budget/ledger.py

# where the time of one budget call goes (pg_stat_statements, function self time): bench/results/budget-profile.*
bench-budget-profile: deps
	$(PY) bench/budget/profile.py

# what V8_102's index costs a reserve + settle pair (A/B on one database): bench/results/budget-index-ab.*
bench-budget-index-ab: deps
	$(PY) bench/budget/index_ab.py

bench-ingest: deps
	$(PY) bench/ingest/run.py

bench-loop-lag: deps
	$(PY) bench/loop_lag/run.py

bench-tracker: deps
	$(PY) bench/tracker/run.py

bench-graph: deps
	$(PY) bench/graph/run.py

# 10M ledger rows over 12 months and 1,000 agents (minutes to load); BENCH_REPORT_ARGS="--data-dir DIR" keeps
# the loaded cluster for the next run.
bench-report: deps
	$(PY) bench/spend/run.py $(BENCH_REPORT_ARGS)

bench-text: deps
	$(PY) bench/text/run.py

# V3_010 -> head on 1M ledger rows under application writes (this release and the first one, same run);
# then the README table.
bench-migrate: deps
	$(PY) bench/migrate/run.py
	$(PY) bench/report.py

clean:
	-$(VENV)/bin/sigledger db down --destroy
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
