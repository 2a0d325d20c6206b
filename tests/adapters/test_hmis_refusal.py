"""Whole-export decisions, made before a single record is yielded: an export that cannot be read
as one, and a victim service provider's export sent by anyone but a shelter (VAWA, 28 CFR
94.115: a VSP's personally identifying information may not leave it), are refused whole: one
fatal problem, no record, no bytes kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.hmis import inspect_export
from gateway.synth.hmis import Year, write_hmis_export
from gateway.vocabulary.source import SourceProblem
from tests.adapters.hmis_fixtures import (
    SECRET_NAME,
    assert_shows_no,
    base_export,
    notices,
    problems,
    read,
    records,
    set_cell,
    write_export,
)

VSP_REFUSAL = (
    "this export is a victim service provider's (Organization.csv VictimServiceProvider = 1); "
    "it is accepted only from a partner of kind shelter"
)


def refusal(items: list) -> SourceProblem:  # type: ignore[type-arg]
    assert len(items) == 1, items
    (problem,) = items
    assert isinstance(problem, SourceProblem)
    assert problem.fatal
    assert problem.origin.raw == b""
    return problem


@pytest.mark.parametrize("partner_kind", ["clinic", "hospital", "legal-aid", "admin", "Shelter"])
def test_a_victim_service_providers_export_from_a_non_shelter_is_refused_whole(
    tmp_path: Path, partner_kind: str
) -> None:
    source = write_export(tmp_path, base_export(victim_service_provider="1"))

    items = read(source, partner_kind=partner_kind)

    assert refusal(items).reason == VSP_REFUSAL
    assert_shows_no(items, SECRET_NAME)


def test_a_generated_vsp_export_from_a_clinic_yields_one_fatal_problem_and_no_record(
    tmp_path: Path,
) -> None:
    source = write_hmis_export(
        tmp_path / "vsp.zip", clients=40, year="FY2026", victim_service_provider=True, as_zip=True
    )

    assert refusal(read(source, partner_kind="clinic")).reason == VSP_REFUSAL


def test_a_victim_service_providers_export_from_a_shelter_is_read_with_a_notice(
    tmp_path: Path,
) -> None:
    source = write_export(tmp_path, base_export(victim_service_provider="1"))

    items = read(source, partner_kind="shelter")

    assert problems(items) == []
    assert notices(items)[0].message == (
        "this export is a victim service provider's (Organization.csv VictimServiceProvider = 1);"
        " accepted because the partner is a shelter"
    )
    assert notices(items)[0].details["victim_service_provider"] is True
    assert len(records(items, "Client")) == 2


@pytest.mark.parametrize("file", ["Project.csv", "Organization.csv"])
def test_a_comparable_database_participation_makes_the_export_a_vsps(
    tmp_path: Path, file: str
) -> None:
    files = base_export()
    files[file][0].append("HMISParticipationType")
    files[file][1].append("2")

    problem = refusal(read(write_export(tmp_path, files), partner_kind="clinic"))

    assert f"({file} HMISParticipationType = 2" in problem.reason


def test_an_hmis_participation_file_of_a_comparable_database_makes_it_a_vsps(
    tmp_path: Path,
) -> None:
    files = base_export()
    files["HMISParticipation.csv"] = [
        ["HMISParticipationID", "ProjectID", "HMISParticipationType", "ExportID"],
        ["HP1", "P1", "2", "EXP-7"],
    ]

    problem = refusal(read(write_export(tmp_path, files), partner_kind="hospital"))

    assert "HMISParticipation.csv HMISParticipationType = 2" in problem.reason


def test_a_partner_registered_as_a_vsp_is_refused_whatever_its_files_say(tmp_path: Path) -> None:
    source = write_export(tmp_path, base_export(victim_service_provider="0"))

    problem = refusal(read(source, partner_kind="clinic", victim_service_provider=True))

    assert "the partner is registered as a victim service provider" in problem.reason
    assert len(records(read(source, victim_service_provider=True), "Client")) == 2


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("no organization file", "Organization.csv is missing"),
        ("no flag column", "Organization.csv has no VictimServiceProvider column"),
        ("unknown flag", "Organization.csv row 2 has a VictimServiceProvider that is not 0 or 1"),
        ("unreadable row", "Organization.csv row 2 cannot be read"),
    ],
)
def test_an_export_whose_vsp_status_cannot_be_told_is_refused_from_a_non_shelter(
    tmp_path: Path, change: str, why: str
) -> None:
    files = base_export()
    organization = files["Organization.csv"]
    if change == "no organization file":
        del files["Organization.csv"]
    elif change == "no flag column":
        organization[0][2] = "Victim"
    elif change == "unknown flag":
        organization[1][2] = "99"
    else:
        organization[1].append("extra")
    source = write_export(tmp_path, files)

    problem = refusal(read(source, partner_kind="clinic"))

    assert problem.reason == (
        f"cannot tell whether this export is a victim service provider's ({why}); "
        "it is accepted only from a partner of kind shelter"
    )
    shelter = read(source, partner_kind="shelter")
    assert len(records(shelter, "Client")) == 2
    assert why in notices(shelter)[0].message


def test_the_vsp_refusal_comes_before_any_other_finding_about_client_rows(tmp_path: Path) -> None:
    files = base_export(victim_service_provider="1")
    set_cell(files, "Client.csv", 1, "DOB", "4/30/1990")
    del files["Enrollment.csv"]

    assert refusal(read(write_export(tmp_path, files), partner_kind="clinic")).reason == (
        VSP_REFUSAL
    )


def test_an_export_with_two_export_rows_is_refused(tmp_path: Path) -> None:
    files = base_export()
    files["Export.csv"].append(list(files["Export.csv"][1]))

    problem = refusal(read(write_export(tmp_path, files)))

    assert problem.reason == "Export.csv has 2 rows; it must have exactly one"


def test_an_export_with_no_export_row_is_refused(tmp_path: Path) -> None:
    files = base_export()
    del files["Export.csv"][1]

    assert refusal(read(write_export(tmp_path, files))).reason == (
        "Export.csv has 0 rows; it must have exactly one"
    )


@pytest.mark.parametrize("version", ["2022 v1.2", "", "FY2025", "2024v", "v1.3 2024", "2026 beta"])
def test_an_export_of_an_unknown_csv_version_is_refused(tmp_path: Path, version: str) -> None:
    files = base_export()
    set_cell(files, "Export.csv", 1, "CSVVersion", version)

    assert refusal(read(write_export(tmp_path, files))).reason == (
        "the CSVVersion of Export.csv is not one this adapter reads (2024 or 2026)"
    )


@pytest.mark.parametrize(
    ("version", "year"),
    [
        ("2024 v1.x", "FY2024"),
        ("2024 v1.3", "FY2024"),
        ("FY2024 v1.2", "FY2024"),
        ("2026 v1", "FY2026"),
        ("2026 v1.0", "FY2026"),
        ("2026", "FY2026"),
    ],
)
def test_the_csv_version_tells_the_fiscal_year_of_every_record(
    tmp_path: Path, version: str, year: str
) -> None:
    files = base_export(year)
    set_cell(files, "Export.csv", 1, "CSVVersion", version)

    items = read(write_export(tmp_path, files))

    assert {record.version for record in records(items)} == {year}


@pytest.mark.parametrize("missing", ["Export.csv", "Client.csv"])
def test_an_export_without_its_export_or_client_file_is_refused(
    tmp_path: Path, missing: str
) -> None:
    files = base_export()
    del files[missing]

    assert refusal(read(write_export(tmp_path, files))).reason == f"{missing} is missing"


def test_an_export_whose_export_row_has_no_export_id_is_refused(tmp_path: Path) -> None:
    files = base_export()
    set_cell(files, "Export.csv", 1, "ExportID", "")

    assert refusal(read(write_export(tmp_path, files))).reason == (
        "Export.csv has no usable ExportID"
    )


def test_a_path_that_is_neither_a_directory_nor_a_file_is_refused(tmp_path: Path) -> None:
    assert refusal(read(tmp_path / "nowhere")).reason == (
        "the export is neither a directory nor a zip file"
    )


@pytest.mark.parametrize("year", ["FY2024", "FY2026"])
def test_inspecting_an_export_tells_its_version_export_id_and_vsp_status(
    tmp_path: Path, year: Year
) -> None:
    plain = write_hmis_export(tmp_path / "plain", clients=5, year=year, seed=4)
    vsp = write_hmis_export(
        tmp_path / "vsp.zip",
        clients=5,
        year=year,
        as_zip=True,
        victim_service_provider=True,
    )

    summary = inspect_export(plain)
    assert (summary.version, summary.export_id, summary.victim_service_provider) == (
        year, f"SYN-{year}-4", False,
    )  # fmt: skip
    assert summary.problems == ()
    flagged = inspect_export(vsp)
    assert flagged.victim_service_provider is True
    assert flagged.basis == "Organization.csv VictimServiceProvider = 1"


def test_inspecting_opens_no_client_file(tmp_path: Path) -> None:
    files = base_export()
    source = write_export(tmp_path, files, raw={"Client.csv": b"\xff\xfe\x00\xd8broken"})

    summary = inspect_export(source)

    assert (summary.version, summary.victim_service_provider) == ("FY2024", False)


def test_inspecting_an_unreadable_export_reports_why(tmp_path: Path) -> None:
    files = base_export()
    del files["Export.csv"]

    summary = inspect_export(write_export(tmp_path, files))

    assert summary.version is None
    assert [problem.reason for problem in summary.problems] == ["Export.csv is missing"]
