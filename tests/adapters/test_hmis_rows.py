"""Bad rows are quarantined one by one, each with its file, row and column and a reason that
quotes nothing of it, and reading goes on: the rest of the file still comes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.hmis import Limits
from gateway.vocabulary.source import Place
from tests.adapters.hmis_fixtures import (
    SECRET_NAME,
    add_row,
    assert_shows_no,
    base_export,
    csv_text,
    only_problem,
    problems,
    read,
    records,
    set_cell,
    write_export,
)


def ids(items: list, record_type: str) -> list[str]:  # type: ignore[type-arg]
    return [record.source_id for record in records(items, record_type)]


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        (
            "DateCreated",
            "4/30/2020 13:42",
            "is not a date and time in the form yyyy-mm-dd hh:mm:ss",
        ),
        ("DOB", "03-11-21", "is not a date in the form yyyy-mm-dd"),
        ("DOB", "4/30/2020", "is not a date in the form yyyy-mm-dd"),
        ("DOB", "2020-02-30", "is not a real calendar date"),
        ("DOB", "20200430", "is not a date in the form yyyy-mm-dd"),
        (
            "DateUpdated",
            "2020-04-30T13:42:00",
            "is not a date and time in the form yyyy-mm-dd hh:mm:ss",
        ),
        ("DateUpdated", "2020-04-30 24:00:00", "is not a real calendar date and time"),
    ],
)
def test_an_excel_rewritten_date_is_quarantined_with_its_row_and_column(
    tmp_path: Path, column: str, value: str, says: str
) -> None:
    files = base_export()
    set_cell(files, "Client.csv", 1, column, value)

    items = read(write_export(tmp_path, files))

    problem = only_problem(items)
    assert problem.record_type == "Client"
    assert problem.places == (Place(file="Client.csv", row=2, column=column),)
    assert problem.reason == f"{column} {says}"
    assert problem.origin.locator == "row 2"
    assert value.encode() in problem.origin.raw
    assert_shows_no(items, value, SECRET_NAME)
    assert ids(items, "Client") == ["C2"]
    assert ids(items, "Enrollment") == ["E1", "E2"]  # her enrollment waits for her fixed row


def test_a_date_in_a_joined_row_quarantines_that_row_alone(tmp_path: Path) -> None:
    files = base_export()
    set_cell(files, "Services.csv", 1, "DateProvided", "1/6/2024")

    items = read(write_export(tmp_path, files))

    problem = only_problem(items)
    assert problem.places == (Place(file="Services.csv", row=2, column="DateProvided"),)
    first = records(items, "Enrollment")[0]
    assert [row["ServicesID"] for row in first.fields["Services"]] == ["S2"]


def test_a_duplicate_personal_id_quarantines_every_row_that_has_it(tmp_path: Path) -> None:
    files = base_export()
    add_row(files, "Client.csv", PersonalID="C1", FirstName="Rosa", ExportID="EXP-7")

    items = read(write_export(tmp_path, files))

    found = problems(items)
    assert [problem.places for problem in found] == [
        (Place(file="Client.csv", row=2, column="PersonalID"),),
        (Place(file="Client.csv", row=4, column="PersonalID"),),
    ]
    assert found[0].reason == "PersonalID appears 2 times in Client.csv (rows 2, 4)"
    assert ids(items, "Client") == ["C2"]
    assert_shows_no(items, "C1", SECRET_NAME, "Rosa")


def test_an_enrollment_of_a_person_not_in_client_csv_is_quarantined(tmp_path: Path) -> None:
    files = base_export()
    add_row(files, "Enrollment.csv", EnrollmentID="E3", PersonalID="C404", ProjectID="P1",
            EntryDate="2024-03-01", ExportID="EXP-7")  # fmt: skip

    items = read(write_export(tmp_path, files))

    problem = only_problem(items)
    assert problem.record_type == "Enrollment"
    assert problem.reason == "PersonalID is in no readable row of Client.csv"
    assert problem.places == (Place(file="Enrollment.csv", row=4, column="PersonalID"),)
    assert_shows_no(items, "C404", "E3")


def test_a_row_of_another_export_id_is_quarantined(tmp_path: Path) -> None:
    files = base_export()
    set_cell(files, "Client.csv", 2, "ExportID", "EXP-8")

    items = read(write_export(tmp_path, files))

    problem = only_problem(items)
    assert problem.reason == "ExportID differs from the ExportID of Export.csv"
    assert problem.places == (Place(file="Client.csv", row=3, column="ExportID"),)
    assert ids(items, "Client") == ["C1"]


@pytest.mark.parametrize(
    ("file", "column"),
    [
        ("Client.csv", "PersonalID"),
        ("Enrollment.csv", "ProjectID"),
        ("Exit.csv", "ExitID"),
        ("HealthAndDV.csv", "PersonalID"),
        ("ReleaseOfInformation.csv", "RecipientOrganization"),
    ],
)
def test_a_row_without_a_required_key_is_quarantined(
    tmp_path: Path, file: str, column: str
) -> None:
    files = base_export()
    set_cell(files, file, 1, column, "")

    items = read(write_export(tmp_path, files))

    (problem,) = [p for p in problems(items) if p.origin.source == file]
    assert problem.places == (Place(file=file, row=2, column=column),)
    assert problem.reason == f"{column} is empty or missing; it is required"


def test_an_enrollment_without_its_id_leaves_its_rows_without_an_enrollment(
    tmp_path: Path,
) -> None:
    files = base_export()
    set_cell(files, "Enrollment.csv", 2, "EnrollmentID", "")

    items = read(write_export(tmp_path, files))

    assert [(p.record_type, p.places[0].row) for p in problems(items)] == [
        ("Enrollment", 3),
        ("Services", 4),
        ("CurrentLivingSituation", 2),
    ]
    assert problems(items)[1].reason == "EnrollmentID is not in Enrollment.csv"


def test_an_identifier_longer_than_huds_32_characters_is_quarantined(tmp_path: Path) -> None:
    files = base_export()
    set_cell(files, "Client.csv", 2, "PersonalID", "C" * 33)
    set_cell(files, "Enrollment.csv", 2, "PersonalID", "C" * 33)

    items = read(write_export(tmp_path, files))

    assert problems(items)[0].reason == "PersonalID is longer than 32 characters"


def test_broken_quoting_mid_file_costs_one_row_and_the_good_rows_after_it_come_through(
    tmp_path: Path,
) -> None:
    header = "PersonalID,FirstName,LastName,DOB,ExportID\r\n"
    broken = f'C2,"{SECRET_NAME},Nguyen,1985-12-01,EXP-7'
    client_csv = (
        header
        + "C1,Ana,Diaz,1990-01-01,EXP-7\r\n"
        + broken
        + "\r\n"
        + "C3,Mai,Tran,1991-02-02,EXP-7\r\n"
        + 'C4,"Lucía ""Lu""",Ruiz,1992-03-03,EXP-7\r\n'
    )
    files = base_export()
    del files["Client.csv"]
    items = read(write_export(tmp_path, files, raw={"Client.csv": client_csv.encode()}))

    quarantined = [problem for problem in problems(items) if problem.record_type == "Client"]
    assert len(quarantined) == 1
    assert quarantined[0].reason.startswith("broken CSV quoting")
    assert quarantined[0].places == (Place(file="Client.csv", row=3),)
    assert quarantined[0].origin.raw == broken.encode()
    assert ids(items, "Client") == ["C1", "C3", "C4"]
    assert records(items, "Client")[2].fields["FirstName"] == 'Lucía "Lu"'
    assert_shows_no(items, SECRET_NAME)


def test_a_stray_quote_inside_an_unquoted_field_is_broken_quoting(tmp_path: Path) -> None:
    files = base_export()
    del files["Client.csv"]
    client_csv = 'PersonalID,FirstName\r\nC1,Ana "Nena"\r\nC2,Linh\r\n'

    items = read(write_export(tmp_path, files, raw={"Client.csv": client_csv.encode()}))

    problem = next(p for p in problems(items) if p.record_type == "Client")
    assert problem.reason.startswith("broken CSV quoting")
    assert ids(items, "Client") == ["C2"]


def test_a_quoted_field_may_hold_a_line_break(tmp_path: Path) -> None:
    files = base_export()
    set_cell(files, "Client.csv", 1, "LastName", "Núñez\r\nde la Cruz")

    items = read(write_export(tmp_path, files))

    assert problems(items) == []
    first, second = records(items, "Client")
    assert first.fields["LastName"] == "Núñez\r\nde la Cruz"
    assert (first.origin.locator, second.origin.locator) == ("row 2", "row 4")


@pytest.mark.parametrize(("extra", "says"), [(2, "row has 12 values"), (-2, "row has 8 values")])
def test_a_row_with_more_or_fewer_values_than_the_header_is_quarantined(
    tmp_path: Path, extra: int, says: str
) -> None:
    files = base_export()
    row = files["Client.csv"][1]
    files["Client.csv"][1] = row + [SECRET_NAME] * extra if extra > 0 else row[:extra]

    items = read(write_export(tmp_path, files))

    problem = problems(items)[0]
    assert problem.reason == f"{says}; the header has 10"
    assert problem.places == (Place(file="Client.csv", row=2),)
    assert ids(items, "Client") == ["C2"]
    assert_shows_no(items, SECRET_NAME)


def test_a_one_megabyte_field_is_quarantined_with_its_column_and_reading_goes_on(
    tmp_path: Path,
) -> None:
    files = base_export()
    huge = SECRET_NAME + "x" * 1_000_000
    set_cell(files, "Client.csv", 1, "LastName", huge)

    items = read(write_export(tmp_path, files))

    problem = only_problem(items)
    assert problem.reason == "LastName is longer than 32768 bytes"
    assert problem.places == (Place(file="Client.csv", row=2, column="LastName"),)
    assert len(problem.origin.raw) > 1_000_000
    assert ids(items, "Client") == ["C2"]
    assert_shows_no(items, SECRET_NAME)


def test_a_row_longer_than_the_row_limit_is_quarantined_cut_to_the_limit(tmp_path: Path) -> None:
    files = base_export()
    set_cell(files, "Client.csv", 1, "LastName", "y" * 5_000)

    items = read(write_export(tmp_path, files), limits=Limits(max_row_bytes=4096))

    problem = problems(items)[0]
    assert problem.reason == "row is longer than 4096 bytes"
    assert problem.places == (Place(file="Client.csv", row=2),)
    assert len(problem.origin.raw) == 4096
    assert ids(items, "Client") == ["C2"]


def test_an_unreadable_client_row_holds_back_every_row_that_points_at_her(
    tmp_path: Path,
) -> None:
    files = base_export()
    files["Client.csv"][1].append("one value too many")

    items = read(write_export(tmp_path, files))

    assert [(p.record_type, p.origin.locator, p.reason) for p in problems(items)] == [
        ("Client", "row 2", "row has 11 values; the header has 10"),
        ("Enrollment", "row 2", "PersonalID is in no readable row of Client.csv"),
        ("Exit", "row 2", "its Enrollment (Enrollment.csv row 2) is quarantined"),
        ("Services", "row 2", "its Enrollment (Enrollment.csv row 2) is quarantined"),
        ("Services", "row 3", "its Enrollment (Enrollment.csv row 2) is quarantined"),
        ("HealthAndDV", "row 2", "its Enrollment (Enrollment.csv row 2) is quarantined"),
        ("ReleaseOfInformation", "row 2", "PersonalID is in no readable row of Client.csv"),
    ]
    assert ids(items, "Enrollment") == ["E2"]


def test_a_row_pointing_at_an_unknown_enrollment_is_quarantined(tmp_path: Path) -> None:
    files = base_export()
    add_row(files, "Services.csv", ServicesID="S9", EnrollmentID="E404", PersonalID="C1",
            DateProvided="2024-01-09", ExportID="EXP-7")  # fmt: skip

    items = read(write_export(tmp_path, files))

    problem = only_problem(items)
    assert problem.record_type == "Services"
    assert problem.reason == "EnrollmentID is not in Enrollment.csv"
    assert problem.places == (Place(file="Services.csv", row=5, column="EnrollmentID"),)


def test_a_row_of_another_person_than_its_enrollments_is_quarantined(tmp_path: Path) -> None:
    files = base_export()
    set_cell(files, "Services.csv", 3, "PersonalID", "C1")  # E2 is C2's

    items = read(write_export(tmp_path, files))

    problem = only_problem(items)
    assert problem.reason == (
        "PersonalID differs from the PersonalID of its Enrollment (Enrollment.csv row 3)"
    )
    assert records(items, "Enrollment")[1].fields["Services"] == []


def test_an_enrollment_with_two_exits_is_quarantined_with_all_its_rows(tmp_path: Path) -> None:
    files = base_export()
    add_row(files, "Exit.csv", ExitID="X2", EnrollmentID="E1", PersonalID="C1",
            ExitDate="2024-03-02", Destination="410", ExportID="EXP-7")  # fmt: skip

    items = read(write_export(tmp_path, files))

    assert ids(items, "Enrollment") == ["E2"]
    found = problems(items)
    assert found[0].reason == "Enrollment has 2 Exit rows; HUD allows one"
    assert sorted((p.record_type, p.places[0].row) for p in found[1:]) == [
        ("Exit", 2), ("Exit", 3), ("HealthAndDV", 2), ("Services", 2), ("Services", 3),
    ]  # fmt: skip
    assert {p.reason for p in found[1:]} == {"its Enrollment (Enrollment.csv row 2) is quarantined"}


def test_a_quarantined_exit_quarantines_its_enrollment_so_that_none_looks_open(
    tmp_path: Path,
) -> None:
    files = base_export()
    set_cell(files, "Exit.csv", 1, "ExitDate", "3/1/2024")

    items = read(write_export(tmp_path, files))

    assert ids(items, "Enrollment") == ["E2"]
    reasons = {(p.record_type, p.reason) for p in problems(items)}
    assert ("Enrollment", "its Exit (Exit.csv row 2) is quarantined") in reasons
    assert ("Exit", "ExitDate is not a date in the form yyyy-mm-dd") in reasons
    assert len(problems(items)) == 5  # the enrollment, its exit, 2 services, 1 health and DV row


def test_a_duplicate_enrollment_id_quarantines_both_and_its_rows_once(tmp_path: Path) -> None:
    files = base_export()
    add_row(files, "Enrollment.csv", EnrollmentID="E1", PersonalID="C1", ProjectID="P1",
            EntryDate="2024-05-01", ExportID="EXP-7")  # fmt: skip

    items = read(write_export(tmp_path, files))

    rows = [(p.record_type, p.places[0].row) for p in problems(items)]
    assert rows.count(("Enrollment", 2)) == rows.count(("Enrollment", 4)) == 1
    assert sorted(r for r in rows if r[0] != "Enrollment") == [
        ("Exit", 2), ("HealthAndDV", 2), ("Services", 2), ("Services", 3),
    ]  # fmt: skip


def test_an_enrollment_in_a_project_not_in_project_csv_is_quarantined(tmp_path: Path) -> None:
    files = base_export()
    set_cell(files, "Enrollment.csv", 2, "ProjectID", "P404")

    items = read(write_export(tmp_path, files))

    assert problems(items)[0].reason == "ProjectID is not in Project.csv"
    assert problems(items)[0].places == (Place(file="Enrollment.csv", row=3, column="ProjectID"),)


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("Scope", "Patient;;CarePlan", "Scope is not a semicolon-separated list of FHIR"),
        ("Scope", "patient", "Scope is not a semicolon-separated list of FHIR"),
        ("Purposes", "treat,coc", "Purposes is not a semicolon-separated list of PurposeOfUse"),
        ("EndDate", "2023-12-31", "EndDate is before StartDate"),
        ("StartDate", "01/05/2024", "StartDate is not a date in the form yyyy-mm-dd"),
        ("PersonalID", "C404", "PersonalID is in no readable row of Client.csv"),
    ],
)
def test_a_release_that_does_not_say_clearly_what_it_releases_is_quarantined(
    tmp_path: Path, column: str, value: str, says: str
) -> None:
    files = base_export()
    set_cell(files, "ReleaseOfInformation.csv", 1, column, value)

    items = read(write_export(tmp_path, files))

    problem = only_problem(items)
    assert problem.record_type == "ReleaseOfInformation"
    assert problem.reason.startswith(says)
    assert problem.places == (Place(file="ReleaseOfInformation.csv", row=2, column=column),)
    assert records(items, "ReleaseOfInformation") == []


def test_a_header_naming_a_column_twice_is_a_problem_and_that_file_is_not_read(
    tmp_path: Path,
) -> None:
    files = base_export()
    files["Services.csv"][0][3] = "dateprovided"
    files["Services.csv"][0][4] = "DATEPROVIDED"

    items = read(write_export(tmp_path, files))

    problem = only_problem(items)
    assert problem.reason == "the header names the column DateProvided twice; the file is not read"
    assert problem.places == (Place(file="Services.csv", row=1),)
    assert all(record.fields["Services"] == [] for record in records(items, "Enrollment"))


def test_a_bad_date_in_the_export_row_is_a_problem_but_not_a_refusal(tmp_path: Path) -> None:
    files = base_export()
    set_cell(files, "Export.csv", 1, "ExportDate", "10/1/2024 2:00")

    items = read(write_export(tmp_path, files))

    problem = only_problem(items)
    assert not problem.fatal
    assert problem.places == (Place(file="Export.csv", row=2, column="ExportDate"),)
    assert len(records(items, "Client")) == 2


def test_a_cell_with_a_nul_character_is_quarantined(tmp_path: Path) -> None:
    files = base_export()
    set_cell(files, "Client.csv", 2, "LastName", "Ng\x00uyen")

    items = read(write_export(tmp_path, files))

    assert only_problem(items).reason == "LastName holds a NUL character"


def test_blank_lines_are_no_rows(tmp_path: Path) -> None:
    files = base_export()
    text = csv_text(files.pop("Client.csv")).replace("\r\nC2", "\r\n\r\n\r\nC2") + "\r\n\r\n"

    items = read(write_export(tmp_path, files, raw={"Client.csv": text.encode()}))

    assert problems(items) == []
    assert [r.origin.locator for r in records(items, "Client")] == ["row 2", "row 5"]


def test_an_empty_file_of_joined_rows_is_no_problem(tmp_path: Path) -> None:
    files = base_export()
    del files["Exit.csv"]

    items = read(write_export(tmp_path, files, raw={"Exit.csv": b""}))

    assert problems(items) == []
    assert [record.fields["Exit"] for record in records(items, "Enrollment")] == [None, None]
