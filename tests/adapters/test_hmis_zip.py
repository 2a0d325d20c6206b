"""A zip export is checked before a byte is decompressed: member count, declared sizes and
compression ratio (zip bombs), and only CSV files at its root are read."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from adapters.hmis import Limits
from gateway.synth.hmis import write_hmis_export
from gateway.vocabulary.source import SourceProblem
from tests.adapters.hmis_fixtures import base_export, csv_text, notices, problems, read, records


def zip_export(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def base_members() -> dict[str, bytes]:
    return {name: csv_text(rows).encode() for name, rows in base_export().items()}


def fatal(items: list) -> str:  # type: ignore[type-arg]
    assert len(items) == 1, items
    assert isinstance(items[0], SourceProblem)
    assert items[0].fatal
    return items[0].reason


def test_a_zip_of_the_export_reads_like_its_directory(tmp_path: Path) -> None:
    items = read(zip_export(tmp_path / "e.zip", base_members()))

    assert problems(items) == []
    assert [r.source_id for r in records(items)] == ["C1", "C2", "E1", "E2", "R1"]
    assert records(items)[0].origin.source == "Client.csv"


def test_a_member_compressed_beyond_the_ratio_limit_is_a_zip_bomb(tmp_path: Path) -> None:
    members = base_members()
    members["Client.csv"] += b"\r\n" * 5_000_000

    reason = fatal(read(zip_export(tmp_path / "bomb.zip", members)))

    assert reason == "Client.csv is compressed more than 200 to 1 (a zip bomb?)"


def test_the_declared_total_size_is_limited(tmp_path: Path) -> None:
    source = zip_export(tmp_path / "e.zip", base_members(), zipfile.ZIP_STORED)

    reason = fatal(read(source, limits=Limits(max_total_bytes=1_000)))

    assert reason == "the CSV files of the zip declare more than 1000 bytes"


def test_the_member_count_is_read_from_the_end_record_before_the_directory(
    tmp_path: Path,
) -> None:
    members = base_members() | {f"note-{n}.txt": b"" for n in range(1_200)}

    reason = fatal(read(zip_export(tmp_path / "many.zip", members)))

    assert reason == "the zip holds 1210 members; at most 1000 are read"


def test_a_lower_member_limit_applies_too(tmp_path: Path) -> None:
    reason = fatal(
        read(zip_export(tmp_path / "e.zip", base_members()), limits=Limits(max_zip_members=4))
    )

    assert reason == "the zip holds 10 members; at most 4 are read"


@pytest.mark.parametrize(
    "name", ["export/Client.csv", "../Client.csv", "a\\Client.csv", "x/../Client.csv"]
)
def test_a_member_with_a_path_is_never_read(tmp_path: Path, name: str) -> None:
    members = base_members()
    members[name] = members.pop("Client.csv")

    items = read(zip_export(tmp_path / "e.zip", members))

    assert fatal(items) == "Client.csv is missing"


def test_members_that_are_not_read_are_counted_in_a_notice(tmp_path: Path) -> None:
    members = base_members() | {
        "Funder.csv": b"FunderID\r\n",
        "notes.txt": b"",
        "sub/Client.csv": b"PersonalID\r\nC9\r\n",
    }

    items = read(zip_export(tmp_path / "e.zip", members))

    (notice,) = [n for n in notices(items) if "not read" in n.message]
    assert notice.details == {
        "hud_files": ["Funder.csv"],
        "other_files": 1,
        "nested_or_not_files": 1,
    }
    assert [r.source_id for r in records(items, "Client")] == ["C1", "C2"]


def test_two_members_of_one_name_in_different_cases_are_refused(tmp_path: Path) -> None:
    members = base_members()
    members["CLIENT.CSV"] = members["Client.csv"]

    assert fatal(read(zip_export(tmp_path / "e.zip", members))) == (
        "the export holds Client.csv twice (in different cases)"
    )


def test_bytes_that_are_not_a_zip_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "e.zip"
    source.write_bytes(b"PK\x03\x04 not really a zip at all" * 10)

    assert fatal(read(source)) == "the export is not a readable zip file"


def test_a_member_that_fails_its_crc_is_refused_before_any_record(tmp_path: Path) -> None:
    source = zip_export(tmp_path / "e.zip", base_members(), zipfile.ZIP_STORED)
    data = bytearray(source.read_bytes())
    at = data.find(b"Linh")
    data[at : at + 4] = b"Lxnh"
    source.write_bytes(bytes(data))

    assert fatal(read(source)) == "Client.csv cannot be read from the zip"


def test_a_generated_zip_keeps_its_csv_files_at_the_root(tmp_path: Path) -> None:
    source = write_hmis_export(tmp_path / "e.zip", clients=3, year="FY2024", as_zip=True)

    with zipfile.ZipFile(source) as archive:
        names = archive.namelist()
    assert all("/" not in name and name.endswith(".csv") for name in names)
    assert "Client.csv" in names
