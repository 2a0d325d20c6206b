"""Generated exports of both years read back whole: every row of every file becomes a record, or
lives inside one, and the records have the shapes the mappings rely on."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from adapters.hmis import read_export
from adapters.hmis.spec import PROJECT_FIELDS
from gateway.synth.hmis import Year, write_hmis_export
from gateway.vocabulary.source import SourceRecord
from tests.adapters.hmis_fixtures import (
    base_export,
    notices,
    problems,
    read,
    records,
    write_export,
)

PARTNERS = ("clinic-northside", "legal-aid-east")


def rows_of(directory: Path, name: str) -> list[dict[str, str]]:
    with (directory / name).open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module", params=["FY2024", "FY2026"])
def generated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("export") / request.param
    return write_hmis_export(
        directory, clients=120, year=request.param, seed=3, releases_to=PARTNERS
    )


@pytest.mark.parametrize("as_zip", [False, True], ids=["directory", "zip"])
@pytest.mark.parametrize("year", ["FY2024", "FY2026"])
def test_a_generated_export_reads_back_with_no_problem_and_every_row(
    tmp_path: Path, year: Year, as_zip: bool
) -> None:
    plain = write_hmis_export(tmp_path / "plain", clients=150, year=year, releases_to=PARTNERS)
    source = plain
    if as_zip:
        source = write_hmis_export(
            tmp_path / "export.zip",
            clients=150,
            year=year,
            releases_to=PARTNERS,
            as_zip=True,
        )

    items = read(source, partner_kind="clinic")

    assert problems(items) == []
    assert {item.system for item in items} == {"hmis-csv"}
    assert {record.version for record in records(items)} == {year}
    enrollments = records(items, "Enrollment")
    assert len(records(items, "Client")) == 150
    assert len(enrollments) == len(rows_of(plain, "Enrollment.csv"))
    assert len(records(items, "ReleaseOfInformation")) == len(
        rows_of(plain, "ReleaseOfInformation.csv")
    )
    for child in ("Services", "HealthAndDV", "CurrentLivingSituation"):
        joined = sum(len(record.fields[child]) for record in enrollments)
        assert joined == len(rows_of(plain, f"{child}.csv")), child
    exits = [record.fields["Exit"] for record in enrollments if record.fields["Exit"]]
    assert len(exits) == len(rows_of(plain, "Exit.csv"))


def test_every_client_comes_before_any_record_that_references_it(generated: Path) -> None:
    seen: set[str] = set()
    for record in records(read(generated, partner_kind="clinic")):
        if record.record_type == "Client":
            seen.add(record.source_id)
        else:
            assert record.fields["PersonalID"] in seen, record.source_id


def test_an_enrollment_carries_its_rows_under_their_file_names(generated: Path) -> None:
    enrollments = records(read(generated, partner_kind="clinic"), "Enrollment")
    for record in enrollments:
        enrollment_id = record.fields["EnrollmentID"]
        assert record.source_id == enrollment_id
        for child in ("Services", "HealthAndDV", "CurrentLivingSituation"):
            assert isinstance(record.fields[child], list)
            assert all(row["EnrollmentID"] == enrollment_id for row in record.fields[child])
        exit_row = record.fields["Exit"]
        assert exit_row is None or exit_row["EnrollmentID"] == enrollment_id
        assert 1 <= len(record.fields["Services"]) <= 5
    assert any(record.fields["Exit"] for record in enrollments)
    assert any(record.fields["Exit"] is None for record in enrollments)


def test_the_joined_project_has_no_name_that_could_locate_a_shelter(generated: Path) -> None:
    names = {row["ProjectName"] for row in rows_of(generated, "Project.csv")}
    for record in records(read(generated, partner_kind="clinic"), "Enrollment"):
        project = record.fields["Project"]
        assert project["ProjectID"] == record.fields["ProjectID"]
        assert set(project) <= set(PROJECT_FIELDS)
        assert "ProjectName" not in project
        assert "ProjectCommonName" not in project
        assert not names & set(project.values())


def test_each_record_keeps_its_row_number_and_its_bytes_as_read(generated: Path) -> None:
    lines = (generated / "Client.csv").read_bytes().split(b"\r\n")
    clients = records(read(generated, partner_kind="clinic"), "Client")
    for record in clients:
        number = int(record.origin.locator.removeprefix("row "))
        assert record.origin.source == "Client.csv"
        assert record.origin.raw == lines[number - 1]
    assert clients[0].origin.locator == "row 2"


def test_a_client_keeps_every_known_column_under_huds_name(generated: Path) -> None:
    client = records(read(generated, partner_kind="clinic"), "Client")[0]
    header = (generated / "Client.csv").read_bytes().decode().split("\r\n")[0].split(",")
    expected = {"HispanicLatinao" if name == "HispanicLatinaeo" else name for name in header}
    assert set(client.fields) == expected
    assert all(isinstance(value, str) for value in client.fields.values())


@pytest.mark.parametrize("year", ["FY2024", "FY2026"])
def test_both_spellings_of_hispanic_latinao_come_out_as_hispanic_latinao(
    tmp_path: Path, year: str
) -> None:
    items = read(write_export(tmp_path, base_export(year)))

    first, second = records(items, "Client")
    assert (first.fields["HispanicLatinao"], second.fields["HispanicLatinao"]) == ("1", "0")
    assert "HispanicLatinaeo" not in first.fields


def test_fy2026_clients_have_sex_and_none_of_the_nine_gender_columns(tmp_path: Path) -> None:
    source = write_hmis_export(tmp_path / "x", clients=30, year="FY2026")
    clients = records(read(source, partner_kind="clinic"), "Client")

    assert all(client.fields["Sex"] in {"0", "1", "8", "9", "99"} for client in clients)
    for column in ("Woman", "Man", "NonBinary", "GenderNone", "DifferentIdentityText"):
        assert all(column not in client.fields for client in clients)
    enrollment = records(read(source, partner_kind="clinic"), "Enrollment")[0]
    assert "MentalHealthConsultation" in enrollment.fields
    assert "SexualOrientation" not in enrollment.fields
    assert "PreferredLanguage" not in enrollment.fields


def test_fy2024_clients_have_the_nine_gender_columns_and_no_sex(tmp_path: Path) -> None:
    source = write_hmis_export(tmp_path / "x", clients=30, year="FY2024")
    clients = records(read(source, partner_kind="clinic"), "Client")

    assert all("Sex" not in client.fields for client in clients)
    assert all(client.fields["Woman"] in {"0", "1"} for client in clients)
    enrollment = records(read(source, partner_kind="clinic"), "Enrollment")[0]
    assert "PreferredLanguage" in enrollment.fields
    assert "MentalHealthConsultation" not in enrollment.fields


def test_a_deleted_row_is_still_a_record_and_carries_its_date_deleted(tmp_path: Path) -> None:
    items = read(write_export(tmp_path, base_export()))

    services = records(items, "Enrollment")[0].fields["Services"]
    assert [row["DateDeleted"] for row in services] == ["", "2024-01-08 08:00:00"]


def test_an_empty_cell_is_an_empty_string_and_an_absent_column_is_absent(tmp_path: Path) -> None:
    client = records(read(write_export(tmp_path, base_export())), "Client")[0]

    assert client.fields["DateDeleted"] == ""
    assert "SSN" not in client.fields


def test_a_release_of_information_is_a_record_of_its_row(tmp_path: Path) -> None:
    (release,) = records(read(write_export(tmp_path, base_export())), "ReleaseOfInformation")

    assert release.source_id == "R1"
    assert release.fields["RecipientOrganization"] == "clinic-1"
    assert release.fields["Scope"] == "Patient;CarePlan"
    assert release.fields["Purposes"] == "TREAT;COC"
    assert release.origin == release.origin.__class__(
        "ReleaseOfInformation.csv",
        "row 2",
        b"R1,C1,clinic-1,Patient;CarePlan,TREAT;COC,2024-01-05,2024-07-05,"
        b"urn:uuid:2b0e7c1e-3f57-4c3e-9a51-0c2d5a0d6f11,,EXP-7",
    )


def test_without_a_release_file_there_are_no_release_records_and_a_notice(tmp_path: Path) -> None:
    files = base_export()
    del files["ReleaseOfInformation.csv"]
    items = read(write_export(tmp_path, files))

    assert records(items, "ReleaseOfInformation") == []
    assert problems(items) == []
    assert any("ReleaseOfInformation.csv is not in the export" in n.message for n in notices(items))


def test_records_are_yielded_lazily_one_at_a_time(tmp_path: Path) -> None:
    source = write_hmis_export(tmp_path / "x", clients=50, year="FY2026")
    items = read_export(source, partner_kind="clinic")

    first_record = next(item for item in items if isinstance(item, SourceRecord))
    assert first_record.record_type == "Client"
    items.close()  # type: ignore[attr-defined]
