"""HL7 v2.5.1 adapter: ADT^A04, ADT^A08 and REF^I12 messages as ``SourceRecord``s, and ACKs.

Every input is hostile. Nothing this module writes (a reason, a locator, an ACK, an exception)
quotes a value of the message: problems name the segment and field (``PID``/``PID-7``), never
what was in it. The message control id (MSH-10) and the facilities of MSH-3..6 are not PHI and
are echoed where HL7 asks for them.

Reading one message (:func:`parse_message`)
==========================================

1. Size: more than ``Limits.max_message_bytes`` is refused (AR) before anything is read.
2. Characters: MSH-18 empty or ``UNICODE UTF-8`` is read as UTF-8, ``8859/1`` as Latin-1,
   anything else is refused (AE, 103). NUL and C0 controls other than CR, LF and TAB are refused.
3. Segment separators CR, LF and CRLF are all accepted (normalised to CR); blank lines dropped.
4. MSH: field separator and the four encoding characters (MSH-2) must be sane and distinct;
   otherwise the message cannot be read at all (AR, 100/102).
5. Type: MSH-9 must be ``ADT^A04``, ``ADT^A08`` (structure ``ADT_A01``) or ``REF^I12``
   (structure ``REF_I12``), MSH-12 ``2.5.1`` and MSH-11 one of P, T, D; otherwise AR with 200,
   201, 203 or 202. MSH-10 must be present (AE, 101): resends are recognised by it.
6. Limits: at most ``max_segments`` segments (AR) and ``max_field_chars`` characters in a field
   (AE, 102, naming the field).
7. Structure: segment order, cardinality and membership are checked against hl7apy's v2.5.1
   definition of the message structure, groups included (AE, 100). A segment that is not part
   of the structure (Z-segments included) refuses the message rather than losing data quietly.
8. Fields, against hl7apy's v2.5.1 definitions of the segments and data types (compiled once
   per segment, then plain string work: hl7apy's element tree cost 13 ms a message, this
   0.3 ms): no field past the segment's last, no repetition of a field that may not repeat,
   no more components or subcomponents than the data type has, the base data types' lengths
   (ST 199, IS 20, FT and TX 65536, NM 16, SI 4) and formats (DT, DTM, TM real dates and times read
   with hl7apy's own readers; NM, SI numbers) (AE, 102, naming ``PID-7.1``); required fields
   (AE, 101). ``""`` (the HL7 null) is accepted for any type. Escape sequences are decoded and
   checked (AE, 102 for a bad one); lengths are of the decoded value.
9. REF^I12 needs RF1 with RF1-6.1 (the referral's identifier, AE 101 without it).

The ``fields`` shape
====================

One dict per message. Keys in capitals are segments; keys in lower case are fields, components
or the convenience keys. The shape depends only on the v2.5.1 definition, never on the values:

- A segment that can occur only once at its level is a dict; one that may repeat is a list of
  dicts (even with one element, or none: an absent segment is an absent key).
- A group (HL7 segment group) is folded into its first segment: each occurrence is that segment's
  dict, with the group's other segments inside it under their IDs. ``REF_I12_PROVIDER_CONTACT``
  is ``PRD: [{...PRD fields..., "CTD": [...]}]``, ``REF_I12_PROCEDURE`` is
  ``PR1: [{..., "AUT": {..., "CTD": {...}}}]``, ``REF_I12_AUTHORIZATION_CONTACT`` is the
  top-level ``AUT: {..., "CTD": {...}}``, ``REF_I12_OBSERVATION`` is
  ``OBR: [{..., "NTE": [...], "OBX": [{..., "NTE": [...]}]}]``, ``ADT_A01_PROCEDURE`` is
  ``PR1: [{..., "ROL": [...]}]``. ADT_A01's two top-level ROL positions share one ``ROL`` list.
- A field is keyed by hl7apy's long name in lower case (``patient_identifier_list``,
  ``date_time_of_birth``). A field that may repeat is a list; one that may not is a single value.
- A primitive value is a ``str`` exactly as sent (dates stay ``"19900101"``, numbers stay
  strings), escapes decoded. ``""`` (the HL7 null: "delete this value") is ``None``.
- A composite value is a dict keyed by the component long names (``family_name``,
  ``id_number``, ``assigning_authority``); a composite component is a dict of its subcomponents
  (``{"namespace_id": "HOPE", "universal_id": "1.2.3"}``). Empty components are omitted.
- ``varies`` (OBX-5) is a list of components, each a list of subcomponent strings, by position.
- PID-8 ``administrative_sex`` is the raw table 0001 code (``F``, ``M``, ``O``, ``U``, ``A``,
  ``N``): the mapping follows the HL7 V2-to-FHIR IG (A and N -> ``other``).
- Escapes: ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` -> ``| ^ & ~ \\``, ``\\Xhh..\\`` -> those bytes in
  the message's character set, ``\\.br\\`` and ``\\.sp\\`` -> a line break, ``\\H\\ \\N\\`` and
  the other formatting commands removed; ``\\C..\\``, ``\\M..\\``, ``\\Z..\\`` and an
  unterminated escape refuse the message (AE, 102).

Convenience keys: ``message_type`` (MSH-9.1), ``trigger`` (MSH-9.2), ``structure``
(``ADT_A01``/``REF_I12``), ``control_id`` (MSH-10), ``sending_application`` (MSH-3.1),
``sending_facility`` (MSH-4.1, what ``partners.yaml`` calls ``hl7_sending_facility``),
``receiving_application`` (MSH-5.1), ``receiving_facility`` (MSH-6.1), ``processing_id``
(MSH-11.1), ``version`` (``2.5.1``), ``patient_identifiers`` (PID-3, the same list as
``PID.patient_identifier_list``) and, for REF^I12, ``referral_id`` (RF1-6.1).

``SourceRecord.source_id`` is RF1-6.1 for REF^I12 and MSH-10 for ADT. docs/hl7v2.md has a full
example of each shape.

Outcomes and ACKs
=================

The ingest side answers each message with an :data:`Outcome`: :class:`Accepted` (stored, or a
resend of a stored message) -> AA/CA; :class:`NotMappable` (its content is wrong: resending it
unchanged will not help) -> AE/CE; :class:`Rejected` (refused for reasons other than content:
unknown facility, unsupported type, too large, the gateway failed) -> AR/CR. A problem from
:func:`parse_message` is an :class:`Hl7Problem` carrying the outcome it calls for
(:func:`outcome_for`). :func:`ack_for` writes the ACK: original mode (AA/AE/AR) when MSH-15 and
MSH-16 are both empty, enhanced mode (CA/CE/CR, always sent: the gateway commits only after it
has stored) otherwise; an ERR segment (error location, table 0357 code, severity E, user
message) for every error.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

from hl7apy import load_library, load_reference  # type: ignore[import-untyped]
from hl7apy.utils import (  # type: ignore[import-untyped]
    get_date_info,
    get_datetime_info,
    get_timestamp_info,
)
from hl7apy.v2_5_1 import SEGMENTS as V251_SEGMENTS  # type: ignore[import-untyped]

from gateway.vocabulary.source import (
    Origin,
    Place,
    SourceItem,
    SourceNotice,
    SourceProblem,
    SourceRecord,
)

_log = logging.getLogger(__name__)

SYSTEM: Final = "hl7v2"
VERSION: Final = "2.5.1"

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c"
CARRIAGE_RETURN: Final = b"\r"

# (MSH-9.1, MSH-9.2) -> message structure
SUPPORTED: Final[dict[tuple[str, str], str]] = {
    ("ADT", "A04"): "ADT_A01",
    ("ADT", "A08"): "ADT_A01",
    ("REF", "I12"): "REF_I12",
}
_MESSAGE_CODES: Final = frozenset(code for code, _trigger in SUPPORTED)
_PROCESSING_IDS: Final = frozenset({"P", "T", "D"})


@dataclass(frozen=True, slots=True)
class Limits:
    """What one message may hold before it is refused unread."""

    max_message_bytes: int = 1_048_576
    max_segments: int = 1_000
    max_field_chars: int = 65_536


DEFAULT_LIMITS: Final = Limits()


class ErrorCode(IntEnum):
    """HL7 table 0357, message error condition codes (ERR-3)."""

    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207


_CODE_TEXT: Final[dict[ErrorCode, str]] = {
    ErrorCode.SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE_ERROR: "Data type error",
    ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ErrorCode.UNSUPPORTED_VERSION_ID: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    ErrorCode.APPLICATION_RECORD_LOCKED: "Application record locked",
    ErrorCode.APPLICATION_INTERNAL_ERROR: "Application internal error",
}


# -- outcomes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """Stored (or already stored: a resend). ACK AA / CA."""


@dataclass(frozen=True, slots=True)
class NotMappable:
    """The message's content is wrong at ``place`` (``Place(segment="PID", field="PID-7")``, or
    ``None`` when no one place is to blame). ACK AE / CE with an ERR. ``sequence`` is which
    occurrence of the segment (ERR-2.2). ``text`` goes to the sender: never a value."""

    place: Place | None
    code: ErrorCode
    text: str
    sequence: int = 1


@dataclass(frozen=True, slots=True)
class Rejected:
    """Refused for a reason other than its content (unsupported type, unknown facility, too
    large, internal failure). ACK AR / CR with an ERR. ``text`` goes to the sender."""

    code: ErrorCode
    text: str
    place: Place | None = None
    sequence: int = 1


Outcome = Accepted | NotMappable | Rejected


@dataclass(frozen=True, slots=True)
class Hl7Problem(SourceProblem):
    """A ``SourceProblem`` that also says which ACK it calls for."""

    outcome: NotMappable | Rejected = field(kw_only=True)


def outcome_for(item: SourceRecord | SourceProblem) -> NotMappable | Rejected | None:
    """The outcome a problem calls for (``None`` for a record: the ingest side decides)."""
    if isinstance(item, Hl7Problem):
        return item.outcome
    if isinstance(item, SourceProblem):
        return Rejected(ErrorCode.APPLICATION_INTERNAL_ERROR, "the message could not be read")
    return None


class _Refusal(Exception):
    """Internal: stops reading a message; never leaves this module."""

    def __init__(self, outcome: NotMappable | Rejected) -> None:
        super().__init__(outcome.text)
        self.outcome = outcome


def _not_mappable(
    code: ErrorCode, text: str, segment: str = "", field: str = "", sequence: int = 1
) -> _Refusal:
    place = Place(segment=segment, field=field) if segment or field else None
    return _Refusal(NotMappable(place, code, text, sequence))


def _rejected(code: ErrorCode, text: str, segment: str = "", field: str = "") -> _Refusal:
    place = Place(segment=segment, field=field) if segment or field else None
    return _Refusal(Rejected(code, text, place))


# -- the MSH, read cheaply (for ACKs, locators and the first checks) -------------------------

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9._:/-]{1,64}\Z")
_HEADER_WINDOW = 16_384


@dataclass(frozen=True, slots=True)
class Encoding:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str

    def as_hl7apy(self) -> dict[str, str]:
        return {
            "FIELD": self.field,
            "COMPONENT": self.component,
            "REPETITION": self.repetition,
            "ESCAPE": self.escape,
            "SUBCOMPONENT": self.subcomponent,
            "SEGMENT": "\r",
            "GROUP": "\r",
        }


STANDARD_ENCODING: Final = Encoding("|", "^", "~", "\\", "&")


@dataclass(frozen=True, slots=True)
class Header:
    """The MSH segment split into fields (raw, escapes not decoded). ``encoding`` is ``None``
    when MSH-2 is not four distinct sane characters (then only whole fields can be read)."""

    field_separator: str
    encoding: Encoding | None
    fields: tuple[str, ...]  # fields[0] is "MSH", fields[n] is MSH-(n+1)

    def field(self, number: int) -> str:
        """MSH-``number`` as sent (MSH-1 is the field separator)."""
        if number == 1:
            return self.field_separator
        index = number - 1
        return self.fields[index] if 0 < index < len(self.fields) else ""

    def component(self, number: int, component: int = 1) -> str:
        """One component of the first repetition of MSH-``number`` ("" when absent)."""
        value = self.field(number)
        if self.encoding is None:
            return value if component == 1 else ""
        value = value.split(self.encoding.repetition, 1)[0]
        parts = value.split(self.encoding.component)
        return parts[component - 1] if component <= len(parts) else ""


def _sane_separator(char: str) -> bool:
    return len(char) == 1 and char.isprintable() and not char.isalnum() and not char.isspace()


def read_header(text: str) -> Header | None:
    """The MSH at the start of ``text`` (leading whitespace skipped), or ``None`` if there is
    none: the text does not start with ``MSH`` and a plausible field separator."""
    text = text.lstrip(" \t\r\n\x0b")
    if not text.startswith("MSH") or len(text) < 4 or not _sane_separator(text[3]):
        return None
    segment = re.split(r"[\r\n]", text, maxsplit=1)[0]
    separator = text[3]
    fields = tuple(segment.split(separator))
    chars = fields[1] if len(fields) > 1 else ""
    encoding: Encoding | None = None
    if (
        len(chars) == 4
        and len(set(chars)) == 4
        and separator not in chars
        and all(_sane_separator(c) for c in chars)
    ):
        encoding = Encoding(separator, chars[0], chars[1], chars[2], chars[3])
    return Header(separator, encoding, fields)


def header_of(message: bytes) -> Header | None:
    """:func:`read_header` of the first bytes of a message (any encoding, never raises)."""
    return read_header(message[:_HEADER_WINDOW].decode("utf-8", "replace"))


def control_id_of(message: bytes) -> str | None:
    """MSH-10 when it is a plain token (letters, digits, ``._:/-``, up to 64), else ``None``:
    what may be shown in a locator or a log."""
    header = header_of(message)
    if header is None:
        return None
    value = header.field(10)
    return value if _SAFE_TOKEN.match(value) else None


# -- escapes ---------------------------------------------------------------------------------

_FORMATTING = re.compile(r"\.(?:fi|nf|ce|in[+-]?\d*|ti[+-]?\d*|sk[+-]?\d*)\Z")
_LINE_BREAKS = re.compile(r"\.(?:br|sp[+-]?\d*)\Z")
_HEX = re.compile(r"X(?:[0-9A-Fa-f]{2})+\Z")


class _BadEscape(Exception):
    pass


def unescape(raw: str, encoding: Encoding, charset: str = "utf-8") -> str:
    """An HL7 leaf value with its escape sequences decoded; :class:`_BadEscape` (never with the
    value) for one this adapter does not accept."""
    escape = encoding.escape
    if escape not in raw:
        return raw
    out: list[str] = []
    position = 0
    while True:
        start = raw.find(escape, position)
        if start < 0:
            out.append(raw[position:])
            return "".join(out)
        end = raw.find(escape, start + 1)
        if end < 0:
            raise _BadEscape("unterminated escape sequence")
        out.append(raw[position:start])
        sequence = raw[start + 1 : end]
        simple = {
            "F": encoding.field,
            "S": encoding.component,
            "T": encoding.subcomponent,
            "R": encoding.repetition,
            "E": escape,
            "H": "",
            "N": "",
        }
        if sequence in simple:
            out.append(simple[sequence])
        elif _HEX.match(sequence):
            try:
                out.append(bytes.fromhex(sequence[1:]).decode(charset))
            except UnicodeDecodeError:
                raise _BadEscape("invalid hexadecimal escape sequence") from None
        elif _LINE_BREAKS.match(sequence):
            out.append("\n")
        elif _FORMATTING.match(sequence):
            pass
        else:
            raise _BadEscape("unsupported escape sequence")
        position = end + 1


def escape_text(text: str, encoding: Encoding = STANDARD_ENCODING) -> str:
    """``text`` with the delimiters escaped (for writing a value into a message)."""
    out: list[str] = []
    table = {
        encoding.escape: "E",
        encoding.field: "F",
        encoding.component: "S",
        encoding.subcomponent: "T",
        encoding.repetition: "R",
    }
    for char in text:
        code = table.get(char)
        out.append(f"{encoding.escape}{code}{encoding.escape}" if code else char)
    return "".join(out)


# -- the v2.5.1 structures, from hl7apy ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    name: str
    is_group: bool
    min: int
    max: int  # -1: unbounded
    children: tuple[_Node, ...] = ()


def _nodes(children: Any) -> tuple[_Node, ...]:
    nodes: list[_Node] = []
    for name, ref, (low, high), kind in children:
        if kind == "GRP":
            nodes.append(_Node(name, True, low, high, _nodes(ref[1])))
        else:
            nodes.append(_Node(name, False, low, high))
    return tuple(nodes)


@cache
def _structure(name: str) -> tuple[_Node, ...]:
    return _nodes(load_reference(name, "Message", VERSION)[1])


def _first_set(node: _Node) -> frozenset[str]:
    if not node.is_group:
        return frozenset({node.name})
    names: set[str] = set()
    for child in node.children:
        names |= _first_set(child)
        if child.min > 0:
            break
    return frozenset(names)


def _required_segment(node: _Node) -> str:
    if not node.is_group:
        return node.name
    for child in node.children:
        if child.min > 0:
            return _required_segment(child)
    return _required_segment(node.children[0])


def _all_names(nodes: tuple[_Node, ...]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        names |= _all_names(node.children) if node.is_group else {node.name}
    return names


def _occurrence(ids: list[str], position: int) -> int:
    return ids[: position + 1].count(ids[position])


_Matched = list[tuple[_Node, Any]]  # (segment node, segment index) or (group node, _Matched)


def _match(
    nodes: tuple[_Node, ...], ids: list[str], position: int, structure: str, out: _Matched
) -> int:
    """Greedy match of segment IDs against a sequence of structure nodes (HL7 structures are
    deterministic), appending what matched to ``out``; raises a segment sequence refusal."""
    for node in nodes:
        count = 0
        while (node.max < 0 or count < node.max) and position < len(ids):
            if node.is_group:
                if ids[position] not in _first_set(node):
                    break
                inner: _Matched = []
                after = _match(node.children, ids, position, structure, inner)
                if after == position:
                    break
                out.append((node, inner))
                position = after
            else:
                if ids[position] != node.name:
                    break
                out.append((node, position))
                position += 1
            count += 1
        if count < node.min:
            required = _required_segment(node)
            if position < len(ids) and required in ids[position:]:
                found = ids[position]
                raise _not_mappable(
                    ErrorCode.SEGMENT_SEQUENCE_ERROR,
                    f"segment {found} is out of order in {structure} ({required} comes first)",
                    found,
                    sequence=_occurrence(ids, position),
                )
            raise _not_mappable(
                ErrorCode.SEGMENT_SEQUENCE_ERROR,
                f"required segment {required} is missing from {structure}",
                required,
            )
    return position


def _check_structure(ids: list[str], structure: str) -> _Matched:
    """The segments matched against the v2.5.1 structure (groups as nested lists)."""
    nodes = _structure(structure)
    matched: _Matched = []
    position = _match(nodes, ids, 0, structure, matched)
    if position < len(ids):
        found = ids[position]
        sequence = _occurrence(ids, position)
        if found not in _all_names(nodes):
            shown = found if found in V251_SEGMENTS or found.startswith("Z") else ""
            what = f"segment {shown}" if shown else f"segment {position + 1} (an unknown segment)"
            raise _not_mappable(
                ErrorCode.SEGMENT_SEQUENCE_ERROR,
                f"{what} is not part of {structure}",
                shown,
                sequence=sequence,
            )
        raise _not_mappable(
            ErrorCode.SEGMENT_SEQUENCE_ERROR,
            f"segment {found} is out of order or repeats more often than {structure} allows",
            found,
            sequence=sequence,
        )
    return matched


# -- parse ----------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _charset(header: Header) -> str:
    declared = header.component(18).strip().upper()
    if declared in ("", "ASCII", "UNICODE UTF-8", "UTF-8"):
        return "utf-8"
    if declared == "8859/1":
        return "latin-1"
    raise _not_mappable(
        ErrorCode.TABLE_VALUE_NOT_FOUND,
        "the character set in MSH-18 is not supported (UNICODE UTF-8 or 8859/1)",
        "MSH",
        "MSH-18",
    )


def _segment_of_offset(data: bytes, offset: int) -> tuple[str, int]:
    """The ID of the segment at a byte offset (when it is a valid ID) and its position."""
    start = max(data.rfind(b"\r", 0, offset), data.rfind(b"\n", 0, offset)) + 1
    segment_id = data[start : start + 3].decode("ascii", "replace")
    index = len(re.findall(rb"\r\n|\r|\n", data[:start]))
    return (segment_id if _SEGMENT_ID.match(segment_id) else "", index + 1)


def _decode(data: bytes) -> tuple[str, Header, str]:
    header = header_of(data)
    if header is None:
        raise _rejected(
            ErrorCode.SEGMENT_SEQUENCE_ERROR,
            "the message does not begin with an MSH segment",
            "MSH",
        )
    charset = _charset(header)
    try:
        text = data.decode(charset)
    except UnicodeDecodeError as error:
        segment, index = _segment_of_offset(data, error.start)
        where = f"segment {segment}" if segment else f"segment {index}"
        raise _not_mappable(
            ErrorCode.DATA_TYPE_ERROR,
            f"{where} is not valid {'UTF-8' if charset == 'utf-8' else 'ISO 8859-1'}",
            segment,
        ) from None
    bad = _CONTROL.search(text)
    if bad:
        segment, index = _segment_of_offset(data, len(text[: bad.start()].encode(charset)))
        where = f"segment {segment}" if segment else f"segment {index}"
        raise _not_mappable(
            ErrorCode.DATA_TYPE_ERROR, f"{where} holds a control character", segment
        )
    return text, header, charset


def _check_header(header: Header) -> tuple[str, str, str]:
    """(message code, trigger, structure) after the MSH checks that refuse the whole message."""
    if header.encoding is None:
        raise _rejected(
            ErrorCode.DATA_TYPE_ERROR,
            "MSH-2 must hold four distinct encoding characters",
            "MSH",
            "MSH-2",
        )
    code = header.component(9, 1)
    trigger = header.component(9, 2)
    structure = header.component(9, 3)
    if code not in _MESSAGE_CODES:
        raise _rejected(
            ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
            "MSH-9 message type is not supported (ADT^A04, ADT^A08 or REF^I12)",
            "MSH",
            "MSH-9",
        )
    expected = SUPPORTED.get((code, trigger))
    if expected is None:
        raise _rejected(
            ErrorCode.UNSUPPORTED_EVENT_CODE,
            f"MSH-9 trigger event is not supported for {code}",
            "MSH",
            "MSH-9",
        )
    if structure and structure != expected:
        raise _rejected(
            ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
            f"MSH-9 message structure must be {expected} for {code}^{trigger}",
            "MSH",
            "MSH-9",
        )
    if header.component(12) != VERSION:
        raise _rejected(
            ErrorCode.UNSUPPORTED_VERSION_ID, "MSH-12 version must be 2.5.1", "MSH", "MSH-12"
        )
    if header.component(11) not in _PROCESSING_IDS:
        raise _rejected(
            ErrorCode.UNSUPPORTED_PROCESSING_ID,
            "MSH-11 processing id must be P, T or D",
            "MSH",
            "MSH-11",
        )
    if not header.field(10):
        raise _not_mappable(
            ErrorCode.REQUIRED_FIELD_MISSING,
            "MSH-10 message control id is missing",
            "MSH",
            "MSH-10",
        )
    return code, trigger, expected


def _split_segments(text: str, encoding: Encoding, limits: Limits) -> list[str]:
    segments = [s for s in re.split(r"\r\n|\r|\n", text.lstrip(" \t\r\n")) if s.strip()]
    if len(segments) > limits.max_segments:
        raise _rejected(
            ErrorCode.APPLICATION_INTERNAL_ERROR,
            f"the message has more than {limits.max_segments} segments",
        )
    seen: dict[str, int] = {}
    for index, segment in enumerate(segments):
        segment_id = segment[:3]
        if not _SEGMENT_ID.match(segment_id) or (len(segment) > 3 and segment[3] != encoding.field):
            raise _not_mappable(
                ErrorCode.SEGMENT_SEQUENCE_ERROR,
                f"segment {index + 1} does not begin with a segment ID",
            )
        seen[segment_id] = seen.get(segment_id, 0) + 1
        first = 1 if segment_id == "MSH" else 0
        for number, value in enumerate(segment.split(encoding.field)[1:], start=1 + first):
            if len(value) > limits.max_field_chars:
                raise _not_mappable(
                    ErrorCode.DATA_TYPE_ERROR,
                    f"{segment_id}-{number} is longer than {limits.max_field_chars} characters",
                    segment_id,
                    f"{segment_id}-{number}",
                    seen[segment_id],
                )
    return segments


# -- the v2.5.1 field definitions, compiled once ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Type:
    """A field's, component's or subcomponent's definition: its key (the long name in lower
    case), its data type and, for a composite, its parts by position."""

    key: str
    datatype: str
    parts: tuple[_Type, ...]
    max_length: int | None  # of a base data type's value (None: no bound)


@dataclass(frozen=True, slots=True)
class _FieldSpec:
    number: int
    type: _Type
    min: int
    max: int  # -1: unbounded


@cache
def _base_lengths() -> dict[str, int | None]:
    """The maximum length hl7apy's v2.5.1 base data types take (ST 199, IS 20, ...)."""
    lengths: dict[str, int | None] = {}
    for name, cls in load_library(VERSION).get_base_datatypes().items():
        if name in ("DT", "DTM", "TM"):
            lengths[name] = None
            continue
        try:
            lengths[name] = cls("").max_length
        except Exception:  # a base type that takes no empty value has no length of its own
            lengths[name] = None
    return lengths


def _type_of(reference: Any) -> _Type:
    kind, parts, datatype, long_name = reference[0], reference[1], reference[2], reference[3]
    key = str(long_name).lower()
    if kind == "leaf" or not parts:
        return _Type(key, str(datatype), (), _base_lengths().get(str(datatype)))
    return _Type(key, str(datatype), tuple(_type_of(part[1]) for part in parts), None)


@cache
def _segment_spec(segment: str) -> tuple[_FieldSpec, ...]:
    """The fields of a v2.5.1 segment, by position (MSH-1 first for MSH)."""
    reference = load_reference(segment, "Segment", VERSION)
    return tuple(
        _FieldSpec(number, _type_of(ref), low, high)
        for number, (_name, ref, (low, high), _kind) in enumerate(reference[1], start=1)
    )


_DT: Final = re.compile(r"\d{4}(?:\d{2}){0,2}\Z", re.ASCII)
_TM: Final = re.compile(r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,4})?)?)?(?:[+-]\d{4})?\Z", re.ASCII)
_DTM: Final = re.compile(
    r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,4})?)?)?)?)?)?(?:[+-]\d{4})?\Z",
    re.ASCII,
)
_NM: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)\Z", re.ASCII)
_SI: Final = re.compile(r"\d{1,4}\Z", re.ASCII)


def _valid_base(value: str, datatype: str) -> bool:
    """Is ``value`` (escapes decoded) a valid v2.5.1 ``datatype`` (dates are real dates, with
    hl7apy's own date readers)?"""
    if datatype == "DT":
        if not _DT.match(value):
            return False
        reader: Any = get_date_info
    elif datatype == "DTM":
        if not _DTM.match(value):
            return False
        reader = get_datetime_info
    elif datatype == "TM":
        if not _TM.match(value):
            return False
        reader = get_timestamp_info
    elif datatype == "NM":
        return len(value) <= 16 and _NM.match(value) is not None
    elif datatype == "SI":
        return _SI.match(value) is not None
    else:
        return True
    try:
        reader(value)
    except ValueError:
        return False
    return True


# -- fields ---------------------------------------------------------------------------------


class _Builder:
    """Checks each field against its v2.5.1 definition (data types, lengths, repetitions,
    components, required fields) and builds ``fields`` from the raw segments, grouped as the
    structure matched them."""

    def __init__(self, segments: list[str], encoding: Encoding, charset: str) -> None:
        self.raw = segments
        self.encoding = encoding
        self.charset = charset
        self.seen: dict[str, int] = {}

    def refuse(self, text: str, segment: str, name: str, sequence: int) -> _Refusal:
        return _not_mappable(ErrorCode.DATA_TYPE_ERROR, text, segment, name, sequence)

    def leaf(self, raw: str, kind: _Type, where: tuple[str, str, int]) -> str | None:
        if raw == '""':
            return None
        try:
            value = unescape(raw, self.encoding, self.charset)
        except _BadEscape as error:
            raise self.refuse(f"{where[1]} holds an {error}", *where) from None
        if kind.max_length is not None and len(value) > kind.max_length:
            raise self.refuse(
                f"{where[1]} is longer than its data type ({kind.datatype}) allows", *where
            )
        if not _valid_base(value, kind.datatype):
            raise self.refuse(f"{where[1]} is not a valid {kind.datatype}", *where)
        return value

    def value(self, raw: str, kind: _Type, level: int, where: tuple[str, str, int]) -> Any:
        """A field (level 0), component (1) or subcomponent (2): a leaf string, a dict of
        named parts, or for ``varies`` a list of components of subcomponents."""
        if raw == '""':  # the HL7 null, for a composite as for a primitive
            return None
        encoding = self.encoding
        if kind.datatype == "varies":
            return [
                [
                    self.leaf(sub, _VARIES_PART, where)
                    for sub in component.split(encoding.subcomponent)
                ]
                for component in raw.split(encoding.component)
            ]
        separators = (encoding.component, encoding.subcomponent)[level:]
        if not kind.parts or level >= 2:
            if any(separator in raw for separator in separators):
                raise self.refuse(
                    f"{where[1]} has parts but its data type ({kind.datatype}) has none", *where
                )
            return self.leaf(raw, kind, where)
        pieces = raw.split(separators[0])
        if len(pieces) > len(kind.parts):
            raise self.refuse(
                f"{where[1]} has more parts than its data type ({kind.datatype}) allows", *where
            )
        out: dict[str, Any] = {}
        for position, (part, text) in enumerate(zip(kind.parts, pieces, strict=False), start=1):
            if text == "":
                continue
            value = self.value(
                text, part, level + 1, (where[0], f"{where[1]}.{position}", where[2])
            )
            if value != {}:
                out[part.key] = value
        return out

    def segment(self, index: int) -> dict[str, Any]:
        raw = self.raw[index]
        segment_id = raw[:3]
        sequence = self.seen[segment_id] = self.seen.get(segment_id, 0) + 1
        specs = _segment_spec(segment_id)
        parts = raw.split(self.encoding.field)
        out: dict[str, Any] = {}
        if segment_id == "MSH":
            out["field_separator"] = self.encoding.field
            out["encoding_characters"] = parts[1]
            numbered = enumerate(parts[2:], start=3)
            present = {1, 2}
        else:
            numbered = enumerate(parts[1:], start=1)
            present = set()
        for number, text in numbered:
            if text == "":
                continue
            name = f"{segment_id}-{number}"
            if number > len(specs):
                raise self.refuse(f"{name} is not defined in v2.5.1", segment_id, name, sequence)
            spec = specs[number - 1]
            where = (segment_id, name, sequence)
            repetitions = text.split(self.encoding.repetition)
            if spec.max == 1 and len(repetitions) > 1:
                raise self.refuse(f"{name} may not repeat", *where)
            if spec.max > 1 and len(repetitions) > spec.max:
                raise self.refuse(f"{name} repeats more often than v2.5.1 allows", *where)
            values = [self.value(rep, spec.type, 0, where) for rep in repetitions if rep != ""]
            values = [value for value in values if value != {}]
            if values:
                present.add(number)
                out[spec.type.key] = values if spec.max != 1 else values[0]
        for spec in specs:
            if spec.min > 0 and spec.number not in present:
                name = f"{segment_id}-{spec.number}"
                raise _not_mappable(
                    ErrorCode.REQUIRED_FIELD_MISSING,
                    f"{name} is required",
                    segment_id,
                    name,
                    sequence,
                )
        return out

    def children(self, nodes: tuple[_Node, ...], matched: _Matched) -> dict[str, Any]:
        """The segments and groups inside a message or group, keyed as the docstring says."""
        shapes = _shapes(nodes)
        out: dict[str, Any] = {key: [] for key, many in shapes.items() if many}
        for node, item in matched:
            if node.is_group:
                value = self.group(node, item)
                key = _anchor_key(node)
            else:
                value = self.segment(item)
                key = node.name
            if shapes.get(key, False):
                out[key].append(value)
            else:
                out[key] = value
        return {key: value for key, value in out.items() if value != []}

    def group(self, node: _Node, matched: _Matched) -> dict[str, Any]:
        anchor = node.children[0]
        if matched and matched[0][0] is anchor:
            out = self.segment(matched[0][1])
            matched = matched[1:]
        else:  # a group whose first segment is optional and absent
            out = {}
        out.update(self.children(node.children[1:], matched))
        return out


_VARIES_PART: Final = _Type("", "ST", (), None)


def _anchor_key(node: _Node) -> str:
    return node.children[0].name if node.is_group else node.name


@cache
def _shapes(nodes: tuple[_Node, ...]) -> dict[str, bool]:
    """Key -> is it a list, for the children of a message or group (from the definition)."""
    shapes: dict[str, bool] = {}
    for node in nodes:
        key = _anchor_key(node)
        many = node.max != 1 or key in shapes
        shapes[key] = shapes.get(key, False) or many
    return shapes


def _first_component(value: Any, key: str) -> str | None:
    if isinstance(value, dict):
        found = value.get(key)
        return found if isinstance(found, str) else None
    return value if isinstance(value, str) else None


def _hd_namespace(msh: dict[str, Any], key: str) -> str | None:
    return _first_component(msh.get(key), "namespace_id")


def _build_fields(
    matched: _Matched, structure: str, builder: _Builder, code: str, trigger: str
) -> dict[str, Any]:
    fields = builder.children(_structure(structure), matched)
    msh = fields["MSH"]
    pid = fields.get("PID", {})
    fields.update(
        {
            "message_type": code,
            "trigger": trigger,
            "structure": structure,
            "control_id": msh.get("message_control_id"),
            "sending_application": _hd_namespace(msh, "sending_application"),
            "sending_facility": _hd_namespace(msh, "sending_facility"),
            "receiving_application": _hd_namespace(msh, "receiving_application"),
            "receiving_facility": _hd_namespace(msh, "receiving_facility"),
            "processing_id": _first_component(msh.get("processing_id"), "processing_id"),
            "version": VERSION,
            "patient_identifiers": list(pid.get("patient_identifier_list", [])),
        }
    )
    if structure == "REF_I12":
        rf1 = fields.get("RF1") or {}
        referral = _first_component(rf1.get("originating_referral_identifier"), "entity_identifier")
        if not referral:
            raise _not_mappable(
                ErrorCode.REQUIRED_FIELD_MISSING,
                "RF1-6.1 originating referral identifier is required",
                "RF1",
                "RF1-6",
            )
        fields["referral_id"] = referral
    return fields


def _read(data: bytes, limits: Limits) -> tuple[str, dict[str, Any]]:
    """(structure, fields) of one message, or a :class:`_Refusal`."""
    if len(data) > limits.max_message_bytes:
        raise _rejected(
            ErrorCode.APPLICATION_INTERNAL_ERROR,
            f"the message is larger than {limits.max_message_bytes} bytes",
        )
    text, header, charset = _decode(data)
    code, trigger, structure = _check_header(header)
    assert header.encoding is not None  # _check_header refused it otherwise
    encoding = header.encoding
    segments = _split_segments(text, encoding, limits)
    matched = _check_structure([segment[:3] for segment in segments], structure)
    builder = _Builder(segments, encoding, charset)
    return structure, _build_fields(matched, structure, builder, code, trigger)


def _locator(data: bytes) -> str:
    control = control_id_of(data)
    return f"message (control id {control})" if control else "message (control id unreadable)"


def parse_message(
    data: bytes,
    *,
    source: str = "mllp",
    locator: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> SourceRecord | Hl7Problem:
    """One HL7 v2.5.1 message (bytes, without MLLP framing) as a record, or as a problem that
    names the segment and field and the outcome it calls for. Never raises for any input."""
    origin = Origin(
        source=source,
        locator=locator or _locator(data),
        raw=data[: limits.max_message_bytes],
    )
    try:
        structure, fields = _read(data, limits)
    except _Refusal as refusal:
        return _problem(refusal.outcome, origin, _structure_name(data))
    except Exception as error:  # hostile input must never escape as an exception
        _log.warning("hl7v2: message not read (%s)", type(error).__name__)
        return _problem(
            Rejected(ErrorCode.APPLICATION_INTERNAL_ERROR, "the message could not be read"),
            origin,
            _structure_name(data),
        )
    source_id = fields["referral_id"] if structure == "REF_I12" else fields["control_id"]
    return SourceRecord(
        system=SYSTEM,
        record_type=structure,
        source_id=source_id,
        fields=fields,
        origin=origin,
        version=VERSION,
    )


def _structure_name(data: bytes) -> str:
    header = header_of(data)
    if header is None:
        return "message"
    key = (header.component(9, 1), header.component(9, 2))
    return SUPPORTED.get(key, "message")


def _problem(outcome: NotMappable | Rejected, origin: Origin, record_type: str) -> Hl7Problem:
    places = (outcome.place,) if outcome.place is not None else ()
    return Hl7Problem(
        system=SYSTEM,
        record_type=record_type,
        reason=outcome.text,
        origin=origin,
        places=places,
        outcome=outcome,
    )


# -- ACKs -----------------------------------------------------------------------------------

_ERL = re.compile(r"([A-Z][A-Z0-9]{2})-(\d{1,3})(?:\.(\d{1,3}))?(?:\.(\d{1,3}))?\Z")
_VERSION_TOKEN = re.compile(r"[0-9.]{1,8}\Z")
_TRIGGER = re.compile(r"[A-Z0-9]{3}\Z")
_APPLICATION = "CARE_GATEWAY"


def _echo(header: Header | None, number: int, limit: int = 227) -> str:
    """MSH-``number`` of the original, re-encoded with the standard delimiters and stripped of
    control characters; ``""`` when unreadable or too long to echo truthfully."""
    if header is None:
        return ""
    value = header.field(number)
    source = header.encoding
    if source is None:
        return value if _SAFE_TOKEN.match(value) else ""
    translate = {
        source.component: "^",
        source.repetition: "~",
        source.escape: "\\",
        source.subcomponent: "&",
    }
    out: list[str] = []
    for char in value:
        if char in translate:
            out.append(translate[char])
        elif char in "|^~\\&":
            out.append(escape_text(char))
        elif char.isprintable():
            out.append(char)
    echoed = "".join(out)
    return echoed if len(echoed) <= limit else ""


def _user_text(text: str, limit: int = 250) -> str:
    cleaned = "".join(c if c.isprintable() and c.isascii() else " " for c in text)[:limit]
    return escape_text(cleaned)


def _error_location(place: Place | None, sequence: int) -> str:
    if place is None:
        return ""
    if place.field:
        found = _ERL.match(place.field)
        if found:
            segment, number, component, sub = found.groups()
            parts = [segment, str(sequence), number, "", component or "", sub or ""]
            return "^".join(parts).rstrip("^")
    if place.segment and _SEGMENT_ID.match(place.segment):
        return f"{place.segment}^{sequence}"
    return ""


def ack_for(
    message: bytes,
    outcome: Outcome,
    *,
    control_id: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """The ACK (bytes, without MLLP framing) answering ``message`` with ``outcome``; built even
    when the message's MSH is garbage (then MSA-2 holds what could be read, else nothing)."""
    header = header_of(message)
    enhanced = header is not None and bool(header.field(15) or header.field(16))
    if isinstance(outcome, Accepted):
        status = "CA" if enhanced else "AA"
    elif isinstance(outcome, NotMappable):
        status = "CE" if enhanced else "AE"
    else:
        status = "CR" if enhanced else "AR"
    trigger = header.component(9, 2) if header is not None else ""
    trigger = trigger if _TRIGGER.match(trigger) else ""
    processing = header.component(11) if header is not None else ""
    processing = processing if processing in _PROCESSING_IDS else "P"
    version = header.component(12) if header is not None else ""
    version = version if _VERSION_TOKEN.match(version) else VERSION
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    msh = [
        "MSH",
        "^~\\&",
        _echo(header, 5) or _APPLICATION,
        _echo(header, 6),
        _echo(header, 3),
        _echo(header, 4),
        stamp,
        "",
        f"ACK^{trigger}^ACK",
        control_id or uuid.uuid4().hex[:20].upper(),
        processing,
        version,
    ]
    original_id = _echo(header, 10, limit=199)
    msa = ["MSA", status, original_id]
    segments = []
    if not isinstance(outcome, Accepted):
        text = _user_text(outcome.text)
        msa.append(text)
        code = outcome.code
        err = [
            "ERR",
            "",
            _error_location(outcome.place, outcome.sequence),
            f"{int(code)}^{_CODE_TEXT[code]}^HL70357",
            "E",
            "",
            "",
            "",
            text,
        ]
        segments.append("|".join(err))
    if any(not part.isascii() for part in msh):
        msh += ["", "", "", "", "", "UNICODE UTF-8"]
    lines = ["|".join(msh), "|".join(msa), *segments]
    return ("\r".join(lines) + "\r").encode("utf-8")


# -- files and streams of messages ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Piece:
    """One unit of a byte stream of messages: a ``message`` (its bytes, without framing), a
    ``truncated`` frame (no end block), an ``oversize`` message (``data`` holds its first
    ``max_message_bytes`` bytes, ``size`` the whole), ``garbage`` (non-blank bytes outside any
    message, first ``max_message_bytes`` kept) or a ``batch`` envelope segment (FHS, BHS, BTS,
    FTS of a plain file)."""

    kind: Literal["message", "truncated", "oversize", "garbage", "batch"]
    data: bytes
    size: int


class _Bounded:
    """Bytes collected up to a bound; the rest only counted."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.data = bytearray()
        self.size = 0

    def add(self, chunk: bytes | bytearray | memoryview) -> None:
        room = self.bound - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.size += len(chunk)

    @property
    def over(self) -> bool:
        return self.size > self.bound

    def blank(self) -> bool:
        return self.size == len(self.data) and not bytes(self.data).strip()


def _framed(chunks: Iterable[bytes], bound: int) -> Iterator[Piece]:
    buffer = bytearray()
    frame: _Bounded | None = None
    garbage = _Bounded(bound)

    def flush_garbage() -> Iterator[Piece]:
        nonlocal garbage
        if not garbage.blank():
            yield Piece("garbage", bytes(garbage.data), garbage.size)
        garbage = _Bounded(bound)

    def finish(frame: _Bounded, complete: bool) -> Piece:
        if frame.over:
            return Piece("oversize", bytes(frame.data), frame.size)
        return Piece("message" if complete else "truncated", bytes(frame.data), frame.size)

    for chunk in chunks:
        buffer += chunk
        while buffer:
            if frame is None:
                start = buffer.find(START_BLOCK)
                if start < 0:
                    garbage.add(buffer)
                    buffer.clear()
                    break
                garbage.add(buffer[:start])
                yield from flush_garbage()
                del buffer[: start + 1]
                frame = _Bounded(bound)
                continue
            end = buffer.find(END_BLOCK)
            restart = buffer.find(START_BLOCK)
            if restart >= 0 and (end < 0 or restart < end):
                frame.add(buffer[:restart])
                yield finish(frame, complete=False)
                frame = None
                del buffer[:restart]
                continue
            if end < 0:
                frame.add(buffer)
                buffer.clear()
                break
            if end + 1 == len(buffer):  # is the next byte the CR? wait for it
                frame.add(buffer[:end])
                del buffer[:end]
                break
            frame.add(buffer[:end])
            skip = 2 if buffer[end + 1 : end + 2] == CARRIAGE_RETURN else 1
            del buffer[: end + skip]
            yield finish(frame, complete=True)
            frame = None
    if frame is not None:
        if buffer[:1] == END_BLOCK:  # the stream ended right after an end block
            yield finish(frame, complete=True)
        else:
            frame.add(buffer)
            yield finish(frame, complete=False)
    elif buffer:
        garbage.add(buffer)
    yield from flush_garbage()


def _lines(chunks: Iterable[bytes], bound: int) -> Iterator[tuple[bytes, int]]:
    """(line, its full length) split at CR or LF; a line is kept up to ``bound`` bytes."""
    buffer = bytearray()
    dropped = 0
    for chunk in chunks:
        buffer += chunk
        while True:
            cut = min((i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                if len(buffer) > bound:
                    dropped += len(buffer) - bound
                    del buffer[bound:]
                break
            yield bytes(buffer[:cut]), cut + dropped
            dropped = 0
            del buffer[: cut + 1]
    if buffer or dropped:
        yield bytes(buffer), len(buffer) + dropped


_BATCH = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})


def _starts_segment(line: bytes, names: frozenset[bytes]) -> bool:
    return line[:3] in names and (len(line) == 3 or not chr(line[3]).isalnum())


def _plain(chunks: Iterable[bytes], bound: int) -> Iterator[Piece]:
    message: _Bounded | None = None
    garbage = _Bounded(bound)

    def flush() -> Iterator[Piece]:
        nonlocal message, garbage
        if not garbage.blank():
            yield Piece("garbage", bytes(garbage.data), garbage.size)
        garbage = _Bounded(bound)
        if message is not None:
            kind: Literal["message", "oversize"] = "oversize" if message.over else "message"
            yield Piece(kind, bytes(message.data), message.size)
        message = None

    for line, length in _lines(chunks, bound + 1):
        if not line.strip():
            continue
        if _starts_segment(line, frozenset({b"MSH"})):
            yield from flush()
            message = _Bounded(bound)
            message.add(line)
            message.size += length - len(line)
        elif _starts_segment(line, _BATCH):
            yield from flush()
            yield Piece("batch", line[:3], length)
        elif message is None:
            garbage.add(line + b"\r")
            garbage.size += length - len(line)
        else:
            message.add(b"\r" + line)
            message.size += length - len(line)
    yield from flush()


_BLANK: Final = b" \t\r\n"


def split_stream(chunks: Iterable[bytes], *, max_message_bytes: int) -> Iterator[Piece]:
    """The messages of a byte stream given in chunks of any size, in constant memory: MLLP
    frames (``0x0B ... 0x1C 0x0D``) when the first non-blank byte is ``0x0B``, else plain
    messages one after another, each starting at a line ``MSH|...`` (CR, LF or CRLF)."""
    iterator = iter(chunks)
    head = b""
    for chunk in iterator:
        # Blank chunks before the first message hold nothing to keep. Not bytes.strip(): it
        # takes 0x0B (vertical tab), MLLP's start block, for white space.
        if chunk.strip(_BLANK):
            head = bytes(chunk)
            break
    first = head.lstrip(_BLANK)[:1]
    rest = _chain(head, iterator)
    if first == START_BLOCK:
        yield from _framed(rest, max_message_bytes)
    elif first:
        yield from _plain(rest, max_message_bytes)


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def read_hl7_file(
    path: Path, *, limits: Limits = DEFAULT_LIMITS, chunk_size: int = 65_536
) -> Iterator[SourceItem]:
    """Every message of a file (MLLP-framed or plain), streamed: each a record or a problem,
    with ``Origin(file name, "message N (control id X)", the message bytes)``."""
    name = path.name
    number = 0
    batch_segments = 0
    with path.open("rb") as handle:
        chunks = iter(lambda: handle.read(chunk_size), b"")
        for piece in split_stream(chunks, max_message_bytes=limits.max_message_bytes):
            if piece.kind == "batch":
                batch_segments += 1
                continue
            if piece.kind == "garbage":
                where = f"after message {number}" if number else "before the first message"
                yield SourceProblem(
                    system=SYSTEM,
                    record_type="message",
                    reason=f"{piece.size} bytes that are not an HL7 message ({where})",
                    origin=Origin(source=name, locator=f"bytes {where}", raw=piece.data),
                )
                continue
            number += 1
            control = control_id_of(piece.data)
            locator = f"message {number} (control id {control or 'unreadable'})"
            if piece.kind == "message":
                yield parse_message(piece.data, source=name, locator=locator, limits=limits)
                continue
            outcome: NotMappable | Rejected
            if piece.kind == "truncated":
                outcome = NotMappable(
                    None, ErrorCode.SEGMENT_SEQUENCE_ERROR, "the MLLP frame has no end block"
                )
            else:
                outcome = Rejected(
                    ErrorCode.APPLICATION_INTERNAL_ERROR,
                    f"the message is larger than {limits.max_message_bytes} bytes "
                    "(only its beginning is kept)",
                )
            yield _problem(
                outcome,
                Origin(source=name, locator=locator, raw=piece.data),
                _structure_name(piece.data),
            )
    if batch_segments:
        yield SourceNotice(
            system=SYSTEM,
            message="batch envelope segments (FHS, BHS, BTS, FTS) were skipped",
            details={"file": name, "segments": batch_segments},
        )
    if number == 0:
        yield SourceNotice(system=SYSTEM, message="the file holds no HL7 message", details={})


def mllp_frame(message: bytes) -> bytes:
    """``message`` in an MLLP frame."""
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN
