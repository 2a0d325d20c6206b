"""Checks of one row's values, as HUD's validator makes them: required keys, identifier length,
dates and datetimes in HUD's one format, field size, undecodable bytes, the export's ExportID,
and the syntax of our ReleaseOfInformation.csv lists. Every reason names a column, never a
value."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Final

from adapters.hmis.encoding import ESCAPED
from adapters.hmis.spec import ID_MAX_LENGTH, RELEASE_OF_INFORMATION_FILE, FileSpec

_DATE: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DATETIME: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})")
_RESOURCE_TYPE: Final = re.compile(r"[A-Z][A-Za-z]{1,63}")
_PURPOSE: Final = re.compile(r"[A-Z][A-Z0-9]{1,31}")

Finding = tuple[str, str]  # (column, reason)


def date_problem(column: str, value: str) -> str | None:
    match = _DATE.fullmatch(value)
    if match is None:
        return f"{column} is not a date in the form yyyy-mm-dd"
    try:
        date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return f"{column} is not a real calendar date"
    return None


def datetime_problem(column: str, value: str) -> str | None:
    match = _DATETIME.fullmatch(value)
    if match is None:
        return f"{column} is not a date and time in the form yyyy-mm-dd hh:mm:ss"
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        datetime(year, month, day, hour, minute, second)
    except ValueError:
        return f"{column} is not a real calendar date and time"
    return None


def _list_problem(column: str, value: str, token: re.Pattern[str], what: str) -> str | None:
    if all(token.fullmatch(part.strip()) for part in value.split(";")):
        return None
    return f"{column} is not a semicolon-separated list of {what}"


def check_row(
    spec: FileSpec,
    fields: Mapping[str, str],
    *,
    export_id: str | None,
    encoding_label: str,
    max_field_bytes: int,
) -> list[Finding]:
    """Everything wrong with one row, as (column, reason) pairs, in column order."""
    findings: list[Finding] = []
    for column, value in fields.items():
        if len(value) * 4 > max_field_bytes and len(value.encode("utf-8", "surrogatepass")) > (
            max_field_bytes
        ):
            findings.append((column, f"{column} is longer than {max_field_bytes} bytes"))
            continue
        if ESCAPED.search(value):
            findings.append((column, f"{column} holds bytes that are not valid {encoding_label}"))
            continue
        if "\x00" in value:
            findings.append((column, f"{column} holds a NUL character"))
            continue
        if not value:
            continue
        problem = None
        if column in spec.dates:
            problem = date_problem(column, value)
        elif column in spec.datetimes:
            problem = datetime_problem(column, value)
        if problem:
            findings.append((column, problem))
    flagged = {column for column, _ in findings}
    for column in spec.required:
        value = fields.get(column, "")
        if column in flagged:
            continue
        if not value.strip():
            findings.append((column, f"{column} is empty or missing; it is required"))
        elif column.endswith("ID") and len(value) > ID_MAX_LENGTH:
            findings.append((column, f"{column} is longer than {ID_MAX_LENGTH} characters"))
    exported = fields.get("ExportID", export_id)
    if export_id is not None and "ExportID" not in flagged and exported != export_id:
        findings.append(("ExportID", "ExportID differs from the ExportID of Export.csv"))
    if spec is RELEASE_OF_INFORMATION_FILE:
        findings.extend(_release_findings(fields, flagged | {c for c, _ in findings}))
    return findings


def _release_findings(fields: Mapping[str, str], flagged: set[str]) -> list[Finding]:
    findings: list[Finding] = []
    scope, purposes = fields.get("Scope", ""), fields.get("Purposes", "")
    if "Scope" not in flagged and scope:
        problem = _list_problem("Scope", scope, _RESOURCE_TYPE, "FHIR resource type names")
        if problem:
            findings.append(("Scope", problem))
    if "Purposes" not in flagged and purposes:
        problem = _list_problem("Purposes", purposes, _PURPOSE, "PurposeOfUse codes")
        if problem:
            findings.append(("Purposes", problem))
    start, end = fields.get("StartDate", ""), fields.get("EndDate", "")
    if start and end and not flagged & {"StartDate", "EndDate"} and end < start:
        findings.append(("EndDate", "EndDate is before StartDate"))
    return findings
