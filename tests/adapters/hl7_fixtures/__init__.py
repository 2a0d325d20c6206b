"""Helpers for the HL7 v2 and MLLP tests: synthetic messages to break, ACKs read back with
python-hl7 (a parser other than the one under test) and a check that no value of a message
shows in what the gateway wrote."""

from __future__ import annotations

import re
from dataclasses import dataclass

import hl7  # type: ignore[import-untyped]

from gateway.synth.hl7 import adt_a04_messages, ref_i12_messages


def referral(seed: int = 7, *, enhanced_ack: bool = False) -> bytes:
    """One synthetic REF^I12 (UTF-8, CR-separated segments)."""
    return next(ref_i12_messages(1, seed=seed, enhanced_ack=enhanced_ack))


def registration(seed: int = 7, *, enhanced_ack: bool = False) -> bytes:
    """One synthetic ADT^A04."""
    return next(adt_a04_messages(1, seed=seed, enhanced_ack=enhanced_ack))


def segments(message: bytes) -> list[bytes]:
    return [s for s in message.split(b"\r") if s]


def join(parts: list[bytes]) -> bytes:
    return b"\r".join(parts) + b"\r"


def set_field(message: bytes, segment_id: bytes, number: int, value: bytes) -> bytes:
    """``message`` with field ``number`` of its first ``segment_id`` replaced (padded)."""
    out = []
    done = False
    for segment in segments(message):
        if not done and segment[:3] == segment_id:
            fields = segment.split(b"|")
            index = number - 1 if segment_id == b"MSH" else number
            while len(fields) <= index:
                fields.append(b"")
            fields[index] = value
            segment = b"|".join(fields)
            done = True
        out.append(segment)
    assert done, f"no {segment_id!r} segment"
    return join(out)


def field(message: bytes, segment_id: bytes, number: int) -> bytes:
    for segment in segments(message):
        if segment[:3] == segment_id:
            fields = segment.split(b"|")
            index = number - 1 if segment_id == b"MSH" else number
            return fields[index] if index < len(fields) else b""
    raise AssertionError(f"no {segment_id!r} segment")


@dataclass(frozen=True)
class Ack:
    """An ACK read with python-hl7."""

    code: str  # MSA-1
    control_id: str  # MSA-2
    msh9: str
    err_location: str  # ERR-2
    err_code: str  # ERR-3
    err_severity: str  # ERR-4
    err_text: str  # ERR-8
    raw: bytes


def read_ack(raw: bytes) -> Ack:
    parsed = hl7.parse(raw.decode("utf-8"))
    msa = parsed.segment("MSA")
    try:
        err = parsed.segment("ERR")
    except KeyError:
        err = None

    def of(segment: object, number: int) -> str:
        if segment is None:
            return ""
        try:
            return str(segment[number])  # type: ignore[index]
        except IndexError:
            return ""

    return Ack(
        code=of(msa, 1),
        control_id=of(msa, 2),
        msh9=str(parsed.segment("MSH")[9]),
        err_location=of(err, 2),
        err_code=of(err, 3),
        err_severity=of(err, 4),
        err_text=of(err, 8),
        raw=raw,
    )


_TOKEN = re.compile(rb"[^|^~\\&\r]{4,}")
_NOT_VALUES = {
    b"UNICODE UTF-8", b"HL70001", b"ISO639", b"2.5.1", b"HL70364", b"HL70283", b"HL70280",
    b"HL70281", b"HL70282", b"HL70284", b"HL70336", b"HL70286", b"I10C", b"Remark",
}  # fmt: skip


def person_values(message: bytes) -> set[bytes]:
    """The values of a message's PID, PRD and NTE segments worth hiding (names, ids, dates of
    birth, addresses, phones, notes), four characters or longer, less what MSH holds."""
    found: set[bytes] = set()
    header: set[bytes] = set()
    for segment in segments(message):
        if segment[:3] == b"MSH":  # facilities and the control id: echoed in ACKs by design
            header |= set(_TOKEN.findall(segment[4:]))
        if segment[:3] in (b"PID", b"NTE", b"PRD"):
            found |= {t for t in _TOKEN.findall(segment[4:]) if t not in _NOT_VALUES}
    return found - header


def assert_shows_no(text: str | bytes, message: bytes) -> None:
    """No value of ``message``'s PID, PRD or NTE segments is in ``text``."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    leaked = sorted(v for v in person_values(message) if v in data)
    assert not leaked, f"{len(leaked)} value(s) of the message shown"
