"""HMIS CSV exports (HUD's FY2024 and FY2026 CSV specifications) as source records.

``read_export`` yields the records of an export directory or zip (``docs/hmis-csv.md``);
``inspect_export`` says what its Export.csv and Organization.csv say of it (version, ExportID,
victim service provider) without opening a client file.
"""

from adapters.hmis.export import SYSTEM, ExportSummary, inspect_export, read_export
from adapters.hmis.limits import Limits

__all__ = ["SYSTEM", "ExportSummary", "Limits", "inspect_export", "read_export"]
