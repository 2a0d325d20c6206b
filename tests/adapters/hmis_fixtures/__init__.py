"""Small HMIS CSV exports built in the tests: a few rows per file, with only the columns the
tests need (an export may leave out columns), that a test then breaks in one place."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from adapters.hmis import read_export
from gateway.vocabulary.source import (
    SourceItem,
    SourceNotice,
    SourceProblem,
    SourceRecord,
)

EXPORT_ID = "EXP-7"
SECRET_NAME = "Xochitl-Quintanilla"
"""A client's first name no reason, place or notice may ever show."""

Files = dict[str, list[list[str]]]  # file name -> rows, the header first


def base_export(year: str = "FY2024", *, victim_service_provider: str = "0") -> Files:
    """Two clients, each with an enrollment; the first has an exit, two services, a health and
    DV row and a release; the second a service and a living situation."""
    version = "2024 v1.3" if year == "FY2024" else "2026 v1.0"
    ethnicity = "HispanicLatinaeo" if year == "FY2024" else "HispanicLatinao"
    audit = ["2024-01-05 10:00:00", "2024-01-06 11:30:00", "U1", "", EXPORT_ID]
    return {
        "Export.csv": [
            ["ExportID", "SourceType", "ExportDate", "ExportStartDate", "ExportEndDate",
             "SoftwareName", "CSVVersion"],
            [EXPORT_ID, "1", "2024-10-01 02:00:00", "2023-10-01", "2024-09-30", "Test", version],
        ],
        "Organization.csv": [
            ["OrganizationID", "OrganizationName", "VictimServiceProvider", "DateCreated",
             "DateUpdated", "UserID", "DateDeleted", "ExportID"],
            ["O1", "Haven House", victim_service_provider, *audit],
        ],
        "Project.csv": [
            ["ProjectID", "OrganizationID", "ProjectName", "ProjectType", "ContinuumProject",
             "ExportID"],
            ["P1", "O1", "Haven House Shelter on Elm Street", "0", "1", EXPORT_ID],
        ],
        "Client.csv": [
            ["PersonalID", "FirstName", "LastName", "DOB", ethnicity, "DateCreated",
             "DateUpdated", "UserID", "DateDeleted", "ExportID"],
            ["C1", SECRET_NAME, "Núñez", "1990-04-30", "1", *audit],
            ["C2", "Linh", "Nguyễn", "1985-12-01", "0", *audit],
        ],
        "Enrollment.csv": [
            ["EnrollmentID", "PersonalID", "ProjectID", "EntryDate", "DateCreated", "ExportID"],
            ["E1", "C1", "P1", "2024-01-05", "2024-01-05 10:00:00", EXPORT_ID],
            ["E2", "C2", "P1", "2024-02-01", "2024-02-01 09:00:00", EXPORT_ID],
        ],
        "Exit.csv": [
            ["ExitID", "EnrollmentID", "PersonalID", "ExitDate", "Destination", "ExportID"],
            ["X1", "E1", "C1", "2024-03-01", "410", EXPORT_ID],
        ],
        "Services.csv": [
            ["ServicesID", "EnrollmentID", "PersonalID", "DateProvided", "RecordType",
             "TypeProvided", "DateDeleted", "ExportID"],
            ["S1", "E1", "C1", "2024-01-06", "200", "200", "", EXPORT_ID],
            ["S2", "E1", "C1", "2024-01-07", "200", "200", "2024-01-08 08:00:00", EXPORT_ID],
            ["S3", "E2", "C2", "2024-02-02", "200", "200", "", EXPORT_ID],
        ],
        "HealthAndDV.csv": [
            ["HealthAndDVID", "EnrollmentID", "PersonalID", "InformationDate",
             "DomesticViolenceSurvivor", "CurrentlyFleeing", "DataCollectionStage", "ExportID"],
            ["H1", "E1", "C1", "2024-01-05", "1", "1", "1", EXPORT_ID],
        ],
        "CurrentLivingSituation.csv": [
            ["CurrentLivingSitID", "EnrollmentID", "PersonalID", "InformationDate",
             "CurrentLivingSituation", "ExportID"],
            ["L1", "E2", "C2", "2024-02-10", "101", EXPORT_ID],
        ],
        "ReleaseOfInformation.csv": [
            ["ROIID", "PersonalID", "RecipientOrganization", "Scope", "Purposes", "StartDate",
             "EndDate", "SignedFormReference", "RevokedDate", "ExportID"],
            ["R1", "C1", "clinic-1", "Patient;CarePlan", "TREAT;COC", "2024-01-05",
             "2024-07-05", "urn:uuid:2b0e7c1e-3f57-4c3e-9a51-0c2d5a0d6f11", "", EXPORT_ID],
        ],
    }  # fmt: skip


def set_cell(files: Files, file: str, row: int, column: str, value: str) -> None:
    """Row 1 is the first row after the header."""
    files[file][row][files[file][0].index(column)] = value


def add_row(files: Files, file: str, **values: str) -> None:
    files[file].append([values.get(column, "") for column in files[file][0]])


def csv_text(rows: Iterable[Sequence[str]], newline: str = "\r\n") -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=newline).writerows(rows)
    return buffer.getvalue()


def write_export(
    directory: Path,
    files: Files,
    *,
    newline: str = "\r\n",
    encoding: str = "utf-8",
    raw: dict[str, bytes] | None = None,
) -> Path:
    """Writes the files (``raw`` replaces or adds files byte for byte)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        (directory / name).write_bytes(csv_text(rows, newline).encode(encoding))
    for name, data in (raw or {}).items():
        (directory / name).write_bytes(data)
    return directory


def read(source: Path, partner_kind: str = "shelter", **options: object) -> list[SourceItem]:
    return list(read_export(source, partner_kind=partner_kind, **options))  # type: ignore[arg-type]


def records(items: Iterable[SourceItem], record_type: str | None = None) -> list[SourceRecord]:
    return [
        item
        for item in items
        if isinstance(item, SourceRecord) and record_type in (None, item.record_type)
    ]


def problems(items: Iterable[SourceItem]) -> list[SourceProblem]:
    return [item for item in items if isinstance(item, SourceProblem)]


def notices(items: Iterable[SourceItem]) -> list[SourceNotice]:
    return [item for item in items if isinstance(item, SourceNotice)]


def only_problem(items: Iterable[SourceItem]) -> SourceProblem:
    found = problems(items)
    assert len(found) == 1, [problem.reason for problem in found]
    return found[0]


def assert_shows_no(items: Iterable[SourceItem], *secrets: str) -> None:
    """No reason, place, origin locator or notice shows any of the secrets."""
    for item in items:
        if isinstance(item, SourceProblem):
            shown = [item.reason, item.origin.source, item.origin.locator]
            for place in item.places:
                shown += [place.file, place.column, place.segment, place.field]
        elif isinstance(item, SourceNotice):
            shown = [item.message, repr(item.details)]
        else:
            shown = [item.origin.source, item.origin.locator]
        for secret in secrets:
            assert all(secret not in text for text in shown), (secret, shown)
