"""Real exports come in any encoding Excel and vendors write, any case of names, any order of
columns, with columns of their own: the adapter says what it found, and reads HUD's names."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from adapters.hmis.encoding import CP1252, UTF8, detect
from gateway.vocabulary.source import Place
from tests.adapters.hmis_fixtures import (
    SECRET_NAME,
    assert_shows_no,
    base_export,
    csv_text,
    notices,
    only_problem,
    problems,
    read,
    records,
    write_export,
)


def client_notices(items: list, file: str = "Client.csv") -> list[str]:  # type: ignore[type-arg]
    return [n.message for n in notices(items) if n.details.get("file") == file]


@pytest.mark.parametrize(
    ("bom", "codec", "label"),
    [
        (b"", "utf-8", "UTF-8"),
        (codecs.BOM_UTF8, "utf-8", "UTF-8 with BOM"),
        (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 LE with BOM"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 BE with BOM"),
    ],
)
def test_a_file_in_utf8_or_utf16_reads_the_same_and_says_its_encoding_once(
    tmp_path: Path, bom: bytes, codec: str, label: str
) -> None:
    files = base_export()
    text = csv_text(files.pop("Client.csv"))

    items = read(write_export(tmp_path, files, raw={"Client.csv": bom + text.encode(codec)}))

    assert problems(items) == []
    assert [r.fields["LastName"] for r in records(items, "Client")] == ["Núñez", "Nguyễn"]
    assert client_notices(items) == [f"Client.csv read as {label}"]


def test_bytes_that_are_not_utf8_are_read_as_windows_1252_with_a_notice(tmp_path: Path) -> None:
    files = base_export()
    files["Client.csv"][2][2] = "Müller"  # Nguyễn has no Windows-1252 spelling
    text = csv_text(files.pop("Client.csv"))

    items = read(write_export(tmp_path, files, raw={"Client.csv": text.encode("cp1252")}))

    assert problems(items) == []
    assert [r.fields["LastName"] for r in records(items, "Client")] == ["Núñez", "Müller"]
    assert client_notices(items) == ["Client.csv read as Windows-1252"]
    assert records(items, "Client")[0].origin.raw.decode("cp1252").startswith("C1,")


def test_a_byte_windows_1252_leaves_undefined_quarantines_its_row_with_the_bytes_kept(
    tmp_path: Path,
) -> None:
    files = base_export()
    files["Client.csv"][2][2] = "Nguyen"
    text = csv_text(files.pop("Client.csv")).replace("Núñez", "N\x00ez")
    data = text.encode("cp1252").replace(b"N\x00ez", b"N\xfa\x81ez")

    items = read(write_export(tmp_path, files, raw={"Client.csv": data}))

    problem = only_problem(items)
    assert problem.reason == "LastName holds bytes that are not valid Windows-1252"
    assert problem.places == (Place(file="Client.csv", row=2, column="LastName"),)
    assert problem.origin.raw == data.split(b"\r\n")[1]
    assert_shows_no(items, SECRET_NAME)


def test_a_broken_utf16_pair_quarantines_its_row_and_keeps_its_utf16_bytes(
    tmp_path: Path,
) -> None:
    files = base_export()
    text = csv_text(files.pop("Client.csv"))
    body = text.encode("utf-16-le").replace("Linh".encode("utf-16-le"), b"\x00\xd8i\x00n\x00h\x00")
    data = codecs.BOM_UTF16_LE + body

    items = read(write_export(tmp_path, files, raw={"Client.csv": data}))

    problem = only_problem(items)
    assert problem.reason == "FirstName holds bytes that are not valid UTF-16 LE with BOM"
    assert problem.origin.raw == body.split("\r\n".encode("utf-16-le"))[2]
    assert [r.source_id for r in records(items, "Client")] == ["C1"]


def test_detection_reads_the_whole_file_in_chunks_not_its_first_bytes(tmp_path: Path) -> None:
    path = tmp_path / "late.csv"
    path.write_bytes(b"a,b\r\n" * 40_000 + b"\xe9\r\n")  # the one non-UTF-8 byte past 64 KiB

    assert detect(path) is CP1252
    path.write_bytes(b"a,b\r\n" * 40_000 + "é\r\n".encode())
    assert detect(path) is UTF8


@pytest.mark.parametrize("newline", ["\r\n", "\n"], ids=["CRLF", "LF"])
def test_crlf_and_lf_line_endings_read_the_same(tmp_path: Path, newline: str) -> None:
    items = read(write_export(tmp_path, base_export(), newline=newline))

    assert problems(items) == []
    assert len(records(items, "Client")) == 2
    assert len(records(items, "Enrollment")[0].fields["Services"]) == 2


def test_mixed_line_endings_in_one_file_read_as_rows(tmp_path: Path) -> None:
    files = base_export()
    text = csv_text(files.pop("Client.csv")).replace("\r\nC2", "\nC2", 1)

    items = read(write_export(tmp_path, files, raw={"Client.csv": text.encode()}))

    assert problems(items) == []
    assert records(items, "Client")[0].fields["ExportID"] == "EXP-7"


def test_file_names_and_headers_in_any_case_and_columns_in_any_order_are_read(
    tmp_path: Path,
) -> None:
    files = base_export()
    client = files.pop("Client.csv")
    order = list(reversed(range(len(client[0]))))
    client = [[row[i] for i in order] for row in client]
    client[0] = [name.upper() if i % 2 else name.lower() for i, name in enumerate(client[0])]
    files["client.CSV"] = client
    files["ENROLLMENT.csv"] = files.pop("Enrollment.csv")

    items = read(write_export(tmp_path, files))

    assert problems(items) == []
    first = records(items, "Client")[0]
    assert first.origin.source == "client.CSV"
    assert first.fields["PersonalID"] == "C1"
    assert first.fields["FirstName"] == SECRET_NAME
    assert first.fields["HispanicLatinao"] == "1"
    assert first.fields["DOB"] == "1990-04-30"
    assert [r.source_id for r in records(items, "Enrollment")] == ["E1", "E2"]


def test_unknown_columns_are_ignored_and_named_once_per_file_without_their_values(
    tmp_path: Path,
) -> None:
    files = base_export()
    files["Client.csv"][0] += ["FavoriteColor", "CaseNotes"]
    for row in files["Client.csv"][1:]:
        row += ["teal", f"{SECRET_NAME} fled on Tuesday"]

    items = read(write_export(tmp_path, files))

    about = [n for n in notices(items) if "unknown column" in n.message]
    assert [(n.message, n.details["columns"]) for n in about] == [
        ("Client.csv: 2 unknown column(s) ignored", ["FavoriteColor", "CaseNotes"])
    ]
    assert "CaseNotes" not in records(items, "Client")[0].fields
    assert_shows_no(items, "fled on Tuesday", "teal")


@pytest.mark.parametrize(
    ("year", "column"),
    [("FY2024", "Sex"), ("FY2026", "Woman"), ("FY2026", "SexualOrientation")],
)
def test_a_column_of_the_other_years_specification_is_an_unknown_column(
    tmp_path: Path, year: str, column: str
) -> None:
    files = base_export(year)
    target = "Enrollment.csv" if column == "SexualOrientation" else "Client.csv"
    files[target][0].append(column)
    for row in files[target][1:]:
        row.append("1")

    items = read(write_export(tmp_path, files))

    assert problems(items) == []
    assert any(n.details.get("columns") == [column] for n in notices(items))
    assert all(column not in r.fields for r in records(items))


def test_a_file_without_its_header_row_shows_none_of_its_first_row(tmp_path: Path) -> None:
    files = base_export()
    del files["Client.csv"][0]

    items = read(write_export(tmp_path, files))

    header = problems(items)[0]
    assert header.reason == (
        "the header row has no PersonalID column (is the header missing?); "
        "its unknown columns are shown by position only"
    )
    assert header.places == (Place(file="Client.csv", row=1),)
    assert SECRET_NAME.encode() in header.origin.raw  # quarantined, not lost
    (notice,) = [n for n in notices(items) if "unknown" in n.message]
    assert notice.details["columns"][:2] == ["(column 1)", "(column 2)"]
    assert records(items, "Client") == []
    assert_shows_no(items, SECRET_NAME, "Linh", "Nguyễn", "1985-12-01", "C2")


def test_an_unknown_column_name_that_is_no_column_name_is_shown_by_its_position(
    tmp_path: Path,
) -> None:
    files = base_export()
    files["Client.csv"][0].append(f"{SECRET_NAME} 555-0101")
    for row in files["Client.csv"][1:]:
        row.append("")

    items = read(write_export(tmp_path, files))

    assert [n.details["columns"] for n in notices(items) if "unknown" in n.message] == [
        ["(column 11)"]
    ]
    assert_shows_no(items, SECRET_NAME)
