"""The synthetic export: HUD's columns for each year, CRLF and UTF-8, made-up people, the same
bytes for the same seed, and the shapes the demo and benchmarks need."""

from __future__ import annotations

import csv
import zipfile
from datetime import date
from pathlib import Path

import pytest

from adapters.hmis import spec
from gateway.synth.hmis import FILES, Year, columns, write_hmis_export
from gateway.synth.names import TRADITIONS

PARTNERS = ("clinic-northside", "legal-aid-east", "hospital-general")


def rows(directory: Path, name: str) -> list[dict[str, str]]:
    with (directory / f"{name}.csv").open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module", params=["FY2024", "FY2026"])
def export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("synth") / request.param
    return write_hmis_export(target, clients=400, year=request.param, seed=11, releases_to=PARTNERS)


def year_of(export: Path) -> str:
    return export.name


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_bytes(tmp_path: Path) -> None:
    first = write_hmis_export(tmp_path / "a.zip", clients=60, year="FY2026", seed=5, as_zip=True)
    again = write_hmis_export(tmp_path / "b.zip", clients=60, year="FY2026", seed=5, as_zip=True)
    other = write_hmis_export(tmp_path / "c.zip", clients=60, year="FY2026", seed=6, as_zip=True)

    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()


@pytest.mark.parametrize("file", [name for name in FILES if name != "ReleaseOfInformation"])
@pytest.mark.parametrize("year", ["FY2024", "FY2026"])
def test_the_generator_writes_huds_columns_in_huds_order(year: Year, file: str) -> None:
    expected = spec.BY_LOWER_NAME[f"{file.lower()}.csv"].columns[year]
    written = tuple(
        "HispanicLatinao" if name == "HispanicLatinaeo" else name for name in columns(file, year)
    )
    assert written == tuple(name for name in expected if name != "HMISParticipationType")


def test_fy2024_has_the_nine_gender_columns_and_fy2026_has_sex(tmp_path: Path) -> None:
    fy2024 = columns("Client", "FY2024")
    fy2026 = columns("Client", "FY2026")
    gender = {"Woman", "Man", "NonBinary", "CulturallySpecific", "Transgender", "Questioning",
              "DifferentIdentity", "GenderNone", "DifferentIdentityText"}  # fmt: skip

    assert gender <= set(fy2024)
    assert "HispanicLatinaeo" in fy2024
    assert "Sex" not in fy2024
    assert not gender & set(fy2026)
    assert "HispanicLatinao" in fy2026
    assert fy2026[fy2026.index("DOBDataQuality") + 1] == "Sex"
    enrollment_2026 = set(columns("Enrollment", "FY2026"))
    assert "MentalHealthConsultation" in enrollment_2026
    assert not {"SexualOrientation", "PreferredLanguage", "TranslationNeeded"} & enrollment_2026
    assert {"SexualOrientation", "PreferredLanguage"} <= set(columns("Enrollment", "FY2024"))


def test_every_file_is_utf8_without_a_bom_and_every_line_ends_in_crlf(export: Path) -> None:
    for name in FILES:
        data = (export / f"{name}.csv").read_bytes()
        data.decode("utf-8")
        assert not data.startswith(b"\xef\xbb\xbf")
        assert data.endswith(b"\r\n")
        assert data.count(b"\n") == data.count(b"\r\n"), name


def test_the_export_has_one_export_row_of_its_version(export: Path) -> None:
    (row,) = rows(export, "Export")
    assert row["CSVVersion"] == {"FY2024": "2024 v1.3", "FY2026": "2026 v1.0"}[year_of(export)]
    assert all(
        other["ExportID"] == row["ExportID"] for name in FILES[1:] for other in rows(export, name)
    )


def test_people_are_made_up_from_the_name_lists(export: Path) -> None:
    givens = {name for given, _ in TRADITIONS.values() for name in given}
    families = {name for _, family in TRADITIONS.values() for name in family}
    clients = rows(export, "Client")

    assert len(clients) == 400
    assert len({client["PersonalID"] for client in clients}) == 400
    assert all(client["FirstName"] in givens for client in clients)
    assert all(client["LastName"] in families for client in clients)
    assert all(client["SSN"] == "" or client["SSN"].startswith("000") for client in clients)


def test_each_enrollment_has_one_to_five_services_and_most_have_an_exit(export: Path) -> None:
    enrollments = rows(export, "Enrollment")
    services: dict[str, int] = {}
    for service in rows(export, "Services"):
        services[service["EnrollmentID"]] = services.get(service["EnrollmentID"], 0) + 1
    exits = {row["EnrollmentID"]: row for row in rows(export, "Exit")}

    assert all(1 <= services[e["EnrollmentID"]] <= 5 for e in enrollments)
    assert 0.5 < len(exits) / len(enrollments) < 1
    for enrollment in enrollments:
        if enrollment["EnrollmentID"] in exits:
            assert exits[enrollment["EnrollmentID"]]["ExitDate"] >= enrollment["EntryDate"]


def test_health_and_dv_rows_say_whether_she_is_a_survivor_and_fleeing(export: Path) -> None:
    health = rows(export, "HealthAndDV")
    survivors = [row for row in health if row["DomesticViolenceSurvivor"] == "1"]

    assert len(survivors) > len(health) / 2
    assert {row["CurrentlyFleeing"] for row in survivors} == {"0", "1"}
    assert all(row["CurrentlyFleeing"] == "" for row in health if row not in survivors)
    assert {row["DataCollectionStage"] for row in health} == {"1", "3"}


def test_releases_name_only_the_given_partners_for_90_to_365_days_some_revoked(
    export: Path,
) -> None:
    releases = rows(export, "ReleaseOfInformation")
    people = {row["PersonalID"] for row in rows(export, "Client")}

    assert releases
    assert {row["RecipientOrganization"] for row in releases} == set(PARTNERS)
    assert {row["PersonalID"] for row in releases} <= people
    for row in releases:
        start, end = date.fromisoformat(row["StartDate"]), date.fromisoformat(row["EndDate"])
        assert 90 <= (end - start).days <= 365
        if row["RevokedDate"]:
            assert start < date.fromisoformat(row["RevokedDate"]) <= end
        assert set(row["Purposes"].split(";")) <= {"TREAT", "COC"}
        assert "Patient" in row["Scope"].split(";")
    assert any(row["RevokedDate"] for row in releases)
    assert not all(row["RevokedDate"] for row in releases)


def test_without_partners_there_is_no_release_file(tmp_path: Path) -> None:
    target = write_hmis_export(tmp_path / "x", clients=5, year="FY2024")

    assert not (target / "ReleaseOfInformation.csv").exists()


@pytest.mark.parametrize(("flag", "value"), [(True, "1"), (False, "0")])
def test_a_victim_service_providers_export_says_so_in_organization_csv(
    tmp_path: Path, flag: bool, value: str
) -> None:
    target = write_hmis_export(
        tmp_path / "x", clients=3, year="FY2026", victim_service_provider=flag
    )

    assert {row["VictimServiceProvider"] for row in rows(target, "Organization")} == {value}


def test_a_zip_holds_the_same_files_as_the_directory(tmp_path: Path) -> None:
    directory = write_hmis_export(tmp_path / "d", clients=20, year="FY2024", releases_to=("c",))
    archive = write_hmis_export(
        tmp_path / "e.zip", clients=20, year="FY2024", releases_to=("c",), as_zip=True
    )

    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == sorted(f"{name}.csv" for name in FILES)
        for name in FILES:
            assert opened.read(f"{name}.csv") == (directory / f"{name}.csv").read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["d", "e.zip"]  # no staging left
