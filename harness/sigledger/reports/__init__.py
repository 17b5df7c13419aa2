"""The read side: spend reports, budget and reservation listings, the quarantine, alert delivery (issue 15).

Every read goes through a read-only SQL function (sql/functions/160-175), so it runs on a hot standby too."""

from sigledger.reports.client import DIMENSIONS, ReportClient

__all__ = ["DIMENSIONS", "ReportClient"]
