"""Every function of the SQL API has a Python method (issue 9), sync and async: the functions are enumerated from
the migrated database, so one added later without a method fails here. The exceptions are listed, each with why."""

from __future__ import annotations

import inspect
import re

import psycopg
from sigledger.budget.aclient import AsyncBudgetClient
from sigledger.budget.client import BudgetClient
from sigledger.ingest import client as ingest_client
from sigledger.ledger.aclient import AsyncLedger
from sigledger.ledger.client import Ledger
from sigledger.reports import alerts, exporter
from sigledger.reports.aclient import AsyncReportClient
from sigledger.reports.client import ReportClient

# (sync class, async class): the library's clients of the SQL API
CLIENTS = [(BudgetClient, AsyncBudgetClient), (Ledger, AsyncLedger), (ReportClient, AsyncReportClient)]

# Functions called by a module of another domain rather than by a client class (name -> module).
ELSEWHERE = {
    "ingest_signals": ingest_client,  # ingest_lines / ingest_file: batches of JSON lines
    "merge_opportunities": ingest_client,
    "resolve_entity": ingest_client,
    # `budget watch`: one LISTEN connection that reads each notified alert and records webhook deliveries
    "budget_alert_document": alerts,
    "budget_alert_last_id": alerts,  # the print mode's high-water at start
    "alert_sink_open": alerts,
    "alert_sink_pending": alerts,
    "alert_sink_delivered": alerts,
    # `metrics serve`: one call per scrape, mapped to gauges
    "metrics_snapshot": exporter,
}

# Functions with no Python method, and why. Keep this list short: a new function belongs in a client.
EXCEPTIONS = {
    # signals, entities and opportunities: the CLI (sigledger signal/entity/opportunity) and applications call
    # them through plain SQL; a Python client for that domain is not part of the budget library (issue 9)
    "ingest_signal": "one signal = ingest_signals with a batch of one",
    "create_entity": "ingest domain, plain SQL",
    "add_alias": "ingest domain, plain SQL",
    "merge_entities": "ingest domain, plain SQL",
    "create_opportunity": "ingest domain, plain SQL",
    "link_signals": "ingest domain, plain SQL",
    "opportunity_signals_of": "ingest domain, plain SQL",
    "entity_signals_of": "ingest domain, plain SQL",
    # a pure function of its argument (docs/text-rules.md), for SQL that queries view entity_alias_lookup directly
    "text_key": "the resolution key of a name, used inside SQL (WHERE alias_key = sigledger.text_key($1))",
    # the Neo4j projection's status: read by sigledger.core.metrics and `sigledger graph status`
    "graph_outbox_status": "read by the metrics exporter and the graph CLI",
}

API = """
SELECT DISTINCT p.proname FROM pg_proc p
 WHERE p.pronamespace = 'sigledger'::regnamespace AND p.proname !~ '^_'
   AND p.prorettype <> 'trigger'::regtype AND p.prokind IN ('f', 'p')
"""


def _calls(obj: object) -> set[str]:
    return set(re.findall(r"sigledger\.(\w+)\(", inspect.getsource(obj)))  # type: ignore[arg-type]


def test_every_api_function_has_a_python_method_sync_and_async(conn: psycopg.Connection) -> None:
    functions = {name for (name,) in conn.execute(API)}
    missing, no_twin = [], []
    for fn in sorted(functions):
        if fn in EXCEPTIONS:
            continue
        if fn in ELSEWHERE:
            if fn not in _calls(ELSEWHERE[fn]):
                missing.append(fn)
            continue
        found = [
            (sync, async_, name)
            for sync, async_ in CLIENTS
            for name, method in inspect.getmembers(sync, inspect.isfunction)
            if fn in _calls(method)
        ]
        if not found:
            missing.append(fn)
        for _, async_, name in found:
            if not inspect.iscoroutinefunction(getattr(async_, name, None)):
                no_twin.append(f"{async_.__name__}.{name}")
    assert not missing, (
        f"SQL API functions without a Python method: {missing}; add one to BudgetClient/Ledger/ReportClient (in the async"
        " source, then `make sync-gen`) or, with a reason, to EXCEPTIONS in this file"
    )
    assert not no_twin, f"methods without an async twin: {no_twin}"


def test_the_exception_list_names_only_functions_that_exist(conn: psycopg.Connection) -> None:
    functions = {name for (name,) in conn.execute(API)}
    assert not (set(EXCEPTIONS) | set(ELSEWHERE)) - functions
