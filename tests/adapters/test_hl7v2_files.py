"""``read_hl7_file`` (``gateway ingest hl7v2 FILE``): MLLP-framed or plain files, streamed,
one record or problem per message with ``message N (control id X)``; a truncated last message,
bytes between messages and batch envelopes each said, never a value."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from adapters.hl7v2 import (
    ErrorCode,
    Hl7Problem,
    Limits,
    NotMappable,
    Rejected,
    mllp_frame,
    read_hl7_file,
    split_stream,
)
from gateway.synth.hl7 import adt_a04_messages, ref_i12_messages, write_mllp_file
from gateway.vocabulary.source import SourceItem, SourceNotice, SourceProblem, SourceRecord
from tests.adapters.hl7_fixtures import assert_shows_no, field, set_field

MESSAGES = list(ref_i12_messages(3, seed=11)) + list(adt_a04_messages(2, seed=12))


def controls(messages: list[bytes]) -> list[str]:
    return [field(m, b"MSH", 10).decode() for m in messages]


def read(path: Path, **options: object) -> list[SourceItem]:
    return list(read_hl7_file(path, chunk_size=97, **options))  # type: ignore[arg-type]


def test_an_mllp_framed_file_yields_one_record_per_message(tmp_path: Path) -> None:
    path = tmp_path / "referrals.hl7"
    assert write_mllp_file(path, MESSAGES) == 5

    items = [item for item in read(path) if isinstance(item, SourceRecord)]

    assert len(items) == len(read(path))
    assert [item.origin.locator for item in items] == [
        f"message {n} (control id {c})" for n, c in enumerate(controls(MESSAGES), start=1)
    ]
    assert [item.origin.source for item in items] == ["referrals.hl7"] * 5
    assert [item.origin.raw for item in items] == MESSAGES


def test_a_plain_file_with_lf_lines_and_blank_lines_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "plain.txt"
    path.write_bytes(b"\n\n" + b"\n\n".join(m.replace(b"\r", b"\n") for m in MESSAGES))
    framed = tmp_path / "framed.hl7"
    write_mllp_file(framed, MESSAGES)

    plain_items = read(path)
    assert all(isinstance(item, SourceRecord) for item in plain_items)
    assert [i.fields for i in plain_items] == [i.fields for i in read(framed)]  # type: ignore[union-attr]


def test_plain_messages_need_no_blank_line_between_them(tmp_path: Path) -> None:
    path = tmp_path / "plain.txt"
    path.write_bytes(b"".join(m.replace(b"\r", b"\r\n") for m in MESSAGES))

    items = read(path)

    assert [type(item) for item in items] == [SourceRecord] * 5


def test_a_truncated_last_frame_is_a_problem_and_the_others_records(tmp_path: Path) -> None:
    path = tmp_path / "cut.hl7"
    data = b"".join(mllp_frame(m) for m in MESSAGES)
    path.write_bytes(data[: len(data) - len(mllp_frame(MESSAGES[-1])) // 2])

    items = read(path)

    assert [type(item) for item in items[:-1]] == [SourceRecord] * 4
    last = items[-1]
    assert isinstance(last, Hl7Problem)
    assert isinstance(last.outcome, NotMappable)
    assert last.reason == "the MLLP frame has no end block"
    assert last.origin.locator == f"message 5 (control id {controls(MESSAGES)[-1]})"


def test_a_truncated_last_plain_message_is_refused_naming_its_segment(tmp_path: Path) -> None:
    path = tmp_path / "cut.txt"
    data = b"".join(MESSAGES)
    cut = data.rindex(b"\rPID|") + 12
    path.write_bytes(data[:cut])

    items = read(path)

    assert [type(item) for item in items[:-1]] == [SourceRecord] * 4
    last = items[-1]
    assert isinstance(last, Hl7Problem)
    assert isinstance(last.outcome, NotMappable)
    assert last.places[0].segment == "PV1"  # an ADT^A04 cut inside PID lacks its PV1
    assert_shows_no(last.reason, MESSAGES[-1])


def test_bytes_between_frames_are_one_problem_and_the_frames_still_read(tmp_path: Path) -> None:
    path = tmp_path / "noisy.hl7"
    path.write_bytes(
        mllp_frame(MESSAGES[0]) + b"Gonzalez 2002\r\n" + mllp_frame(MESSAGES[1]) + b"\r\n"
    )

    items = read(path)

    assert [type(item) for item in items] == [SourceRecord, SourceProblem, SourceRecord]
    noise = items[1]
    assert isinstance(noise, SourceProblem)
    assert noise.reason == "15 bytes that are not an HL7 message (after message 1)"
    assert "Gonzalez" not in noise.reason
    assert "Gonzalez" not in noise.origin.locator


def test_an_oversize_message_is_rejected_and_only_its_beginning_kept(tmp_path: Path) -> None:
    path = tmp_path / "big.hl7"
    big = set_field(MESSAGES[0], b"PID", 11, b"x" * 5_000)
    write_mllp_file(path, [big, MESSAGES[1]])

    items = read(path, limits=Limits(max_message_bytes=2_000))

    first = items[0]
    assert isinstance(first, Hl7Problem)
    assert isinstance(first.outcome, Rejected)
    assert first.outcome.code is ErrorCode.APPLICATION_INTERNAL_ERROR
    assert len(first.origin.raw) == 2_000
    assert isinstance(items[1], SourceRecord)


def test_batch_envelopes_are_skipped_with_a_notice(tmp_path: Path) -> None:
    path = tmp_path / "batch.txt"
    path.write_bytes(b"FHS|^~\\&\rBHS|^~\\&\r" + b"".join(MESSAGES[:2]) + b"BTS|2\rFTS|1\r")

    items = read(path)

    assert [type(item) for item in items] == [SourceRecord, SourceRecord, SourceNotice]
    notice = items[-1]
    assert isinstance(notice, SourceNotice)
    assert notice.details["segments"] == 4


def test_an_empty_file_holds_no_message(tmp_path: Path) -> None:
    path = tmp_path / "empty.hl7"
    path.write_bytes(b"\r\n \n")
    items = read(path)
    assert len(items) == 1
    assert isinstance(items[0], SourceNotice)


def test_the_stream_is_split_lazily_in_constant_memory() -> None:
    """The first message is yielded before the rest of the stream has been read."""
    read_chunks = 0

    def chunks() -> Iterator[bytes]:
        nonlocal read_chunks
        for message in MESSAGES * 200:
            read_chunks += 1
            yield mllp_frame(message)

    pieces = split_stream(chunks(), max_message_bytes=100_000)
    first = next(pieces)
    assert first.kind == "message"
    assert first.data == MESSAGES[0]
    assert read_chunks <= 2
    assert sum(1 for _ in pieces) == 999
