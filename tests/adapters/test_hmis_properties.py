"""Properties over many inputs: whatever the bytes, reading yields items and never raises; a
well-formed file reads back exactly as Python's csv module wrote it; and no value of a row,
however the row is broken, ever shows in a reason, a place or a notice. Each property counts the
examples that reached its assertions, so that a property that never ran cannot pass."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hmis import Limits
from gateway.vocabulary.source import SourceNotice, SourceProblem, SourceRecord
from tests.adapters.hmis_fixtures import (
    assert_shows_no,
    base_export,
    csv_text,
    problems,
    read,
    records,
    write_export,
)

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ITEM_TYPES = (SourceRecord, SourceProblem, SourceNotice)
FILES = ("Export.csv", "Organization.csv", "Project.csv", "Client.csv", "Enrollment.csv",
         "Services.csv", "Exit.csv", "ReleaseOfInformation.csv")  # fmt: skip
HEADER = b"PersonalID,FirstName,LastName,DOB,ExportID\r\n"


def test_arbitrary_bytes_in_any_file_only_ever_yield_items() -> None:
    reached: list[str] = []

    @SETTINGS
    @given(
        file=st.sampled_from(FILES),
        keep_header=st.booleans(),
        data=st.binary(max_size=3_000),
    )
    def prove(file: str, keep_header: bool, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as directory:
            files = base_export()
            header = csv_text(files.pop(file)[:1]).encode() if keep_header else b""
            source = write_export(Path(directory), files, raw={file: header + data})

            items = read(source, partner_kind="clinic", limits=Limits(max_row_bytes=1_024))

            assert items
            assert all(isinstance(item, ITEM_TYPES) for item in items)
            fatal = [item for item in problems(items) if item.fatal]
            assert not fatal or len(items) == 1
            reached.append(file)

    prove()
    assert len(reached) >= 60
    assert len(set(reached)) > 1


def test_arbitrary_bytes_as_a_zip_are_refused_and_never_raise() -> None:
    reached: list[bool] = []

    @SETTINGS
    @given(data=st.binary(max_size=2_000), zip_like=st.booleans())
    def prove(data: bytes, zip_like: bool) -> None:
        with tempfile.TemporaryDirectory() as directory:
            source = Path(directory) / "export.zip"
            prefix = b"PK\x03\x04" if zip_like else b""
            suffix = b"PK\x05\x06" + bytes(18) if zip_like else b""
            source.write_bytes(prefix + data + suffix)

            items = read(source)

            assert len(items) == 1
            assert isinstance(items[0], SourceProblem)
            assert items[0].fatal
            reached.append(True)

    prove()
    assert len(reached) >= 60


cells = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40
)


def test_a_well_formed_client_file_reads_back_as_the_csv_module_wrote_it() -> None:
    reached: list[int] = []

    @SETTINGS
    @given(names=st.lists(st.tuples(cells, cells), min_size=1, max_size=12))
    def prove(names: list[tuple[str, str]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(["PersonalID", "FirstName", "LastName", "DOB", "ExportID"])
        for number, (given_name, family) in enumerate(names):
            writer.writerow([f"C{number}", given_name, family, "1990-01-31", "EXP-7"])
        with tempfile.TemporaryDirectory() as directory:
            files = {name: rows[:1] for name, rows in base_export().items()}  # headers only
            del files["Client.csv"]
            files["Export.csv"] = base_export()["Export.csv"]
            source = write_export(
                Path(directory), files, raw={"Client.csv": buffer.getvalue().encode()}
            )

            items = read(source)

            assert problems(items) == []
            clients = records(items, "Client")
            assert [(c.fields["FirstName"], c.fields["LastName"]) for c in clients] == names
            reached.append(len(clients))

    prove()
    assert len(reached) >= 60


@st.composite
def broken_client_file(draw: st.DrawFn) -> tuple[bytes, str]:
    """A client file with a value planted in one row, and that row broken in one way."""
    secret = draw(st.from_regex(r"Q[a-z]{6}[0-9]{3}", fullmatch=True))
    rows = [[f"C{n}", "Ana", "Diaz", "1990-01-31", "EXP-7"] for n in range(4)]
    target = draw(st.integers(0, 3))
    way = draw(
        st.sampled_from(
            ["date", "quote", "extra", "fewer", "huge", "export", "duplicate", "key", "nul"]
        )
    )
    row = rows[target]
    if way == "date":
        row[3] = secret
    elif way == "extra":
        row.append(secret)
    elif way == "fewer":
        row[1:] = [secret]
    elif way == "huge":
        row[2] = secret * 4_000
    elif way == "export":
        row[4] = secret
    elif way == "duplicate":
        row[0] = rows[(target + 1) % 4][0] = secret
    elif way == "key":
        row[0] = secret * 4
    elif way == "nul":
        row[1] = secret + "\x00"
    else:
        row[1] = f'"{secret}'
    lines = [",".join(r) for r in rows] if way == "quote" else None
    text = (
        HEADER.decode() + "\r\n".join(lines) + "\r\n"
        if lines is not None
        else HEADER.decode() + "".join(f"{csv_text([r])}" for r in rows)
    )
    return text.encode(), secret


def test_no_value_of_a_broken_row_ever_shows_in_a_reason_place_or_notice() -> None:
    reached: list[int] = []

    @SETTINGS
    @given(case=broken_client_file())
    def prove(case: tuple[bytes, str]) -> None:
        data, secret = case
        with tempfile.TemporaryDirectory() as directory:
            files = base_export()
            del files["Client.csv"]
            source = write_export(Path(directory), files, raw={"Client.csv": data})

            items = read(source)

            client_problems = [p for p in problems(items) if p.record_type == "Client"]
            assert client_problems
            assert_shows_no(items, secret)
            shown = len(client_problems) + len(records(items, "Client"))
            assert shown == 4  # every row of the file: a record or a problem, once
            reached.append(len(client_problems))

    prove()
    assert len(reached) >= 60
