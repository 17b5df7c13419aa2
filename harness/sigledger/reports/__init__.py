"""The read side: spend reports, budget and reservation listings, the quarantine, alert delivery (issue 15).

``AsyncReportClient`` / ``ReportClient`` (aclient -> client, generated) call the read API; every read goes
through a read-only SQL function (sql/functions/160-175), so it runs on a hot standby too. ``alerts``: the
watcher and webhook behind `sigledger budget watch`; ``exporter``: the database exporter of `sigledger metrics
serve`."""

from sigledger.reports.aclient import AsyncReportClient
from sigledger.reports.client import ReportClient
from sigledger.reports.spend import DIMENSIONS

__all__ = ["DIMENSIONS", "AsyncReportClient", "ReportClient"]
