"""Reading HL7 v2.5.1 messages and answering them: the ``fields`` shape the mappings rely on,
strict v2.5.1 checks, and for every malformed message an AE or AR whose ERR names the segment
and field and whose text never quotes a value of the message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7v2 import (
    DEFAULT_LIMITS,
    Accepted,
    ErrorCode,
    Hl7Problem,
    Limits,
    NotMappable,
    Rejected,
    ack_for,
    control_id_of,
    escape_text,
    outcome_for,
    parse_message,
)
from gateway.vocabulary.source import Place, SourceProblem, SourceRecord
from tests.adapters.hl7_fixtures import (
    assert_shows_no,
    field,
    join,
    read_ack,
    referral,
    registration,
    segments,
    set_field,
)
from tests.support.reach import Reach

REFERRAL = referral(7)
REGISTRATION = registration(7)


def record(message: bytes, limits: Limits = DEFAULT_LIMITS) -> SourceRecord:
    parsed = parse_message(message, limits=limits)
    assert isinstance(parsed, SourceRecord), getattr(parsed, "reason", parsed)
    return parsed


def problem(message: bytes, limits: Limits = DEFAULT_LIMITS) -> Hl7Problem:
    parsed = parse_message(message, limits=limits)
    assert isinstance(parsed, Hl7Problem), "the message was read as a record"
    return parsed


# -- the fields shape ----------------------------------------------------------------------


def test_a_referral_reads_as_the_documented_ref_i12_shape() -> None:
    read = record(REFERRAL)
    fields = read.fields

    assert read.system == "hl7v2"
    assert read.record_type == "REF_I12"
    assert read.source_id == fields["referral_id"] == "R00070000001"
    assert fields["structure"] == "REF_I12"
    assert (fields["message_type"], fields["trigger"], fields["version"]) == ("REF", "I12", "2.5.1")
    assert fields["sending_facility"] == "HOPE_SHELTER"
    assert fields["receiving_facility"] == "STMARYS"
    assert fields["control_id"] == field(REFERRAL, b"MSH", 10).decode()
    rf1 = fields["RF1"]
    assert rf1["originating_referral_identifier"]["entity_identifier"] == "R00070000001"
    assert rf1["referral_status"]["identifier"] in ("A", "P")
    pid = fields["PID"]
    assert isinstance(pid, dict)
    identifiers = pid["patient_identifier_list"]
    assert isinstance(identifiers, list)
    assert identifiers[0]["identifier_type_code"] == "MR"
    assert identifiers[0]["assigning_authority"] == {"namespace_id": "HOPE_SHELTER"}
    assert fields["patient_identifiers"] == identifiers
    assert pid["date_time_of_birth"]["time"] == field(REFERRAL, b"PID", 7).decode()
    assert isinstance(pid["patient_name"], list)
    assert "family_name" in pid["patient_name"][0]
    roles = [prd["provider_role"][0]["identifier"] for prd in fields["PRD"]]
    assert roles == ["RP", "RT"]
    assert all(isinstance(dg1, dict) for dg1 in fields["DG1"])
    assert isinstance(fields["NTE"], list)


def test_a_registration_reads_as_the_documented_adt_a01_shape() -> None:
    read = record(REGISTRATION)
    fields = read.fields

    assert read.record_type == "ADT_A01"
    assert read.source_id == fields["control_id"] == field(REGISTRATION, b"MSH", 10).decode()
    assert (fields["message_type"], fields["trigger"]) == ("ADT", "A04")
    assert fields["EVN"]["event_type_code"] == "A04"
    assert fields["PV1"]["patient_class"] == "O"
    assert fields["PV1"]["visit_number"]["identifier_type_code"] == "VN"
    assert fields["PID"]["patient_identifier_list"][0]["assigning_authority"] == {
        "namespace_id": "STMARYS"
    }
    assert "referral_id" not in fields


def test_groups_fold_into_their_first_segment() -> None:
    """REF_I12_PROVIDER_CONTACT is PRD with its CTD inside; REF_I12_PROCEDURE is PR1."""
    parts = segments(REFERRAL)
    at = next(i for i, s in enumerate(parts) if s.startswith(b"PRD|RT"))
    parts.insert(at + 1, b"CTD|CP^Contact person^HL70131|Doe^Jo")
    fields = record(join(parts)).fields

    rt = fields["PRD"][1]
    assert rt["CTD"][0]["contact_role"][0]["identifier"] == "CP"
    assert "CTD" not in fields


@pytest.mark.parametrize("sex", ["F", "M", "O", "U", "A", "N"])
def test_pid_8_keeps_the_raw_table_0001_code(sex: str) -> None:
    message = set_field(REFERRAL, b"PID", 8, sex.encode())
    assert record(message).fields["PID"]["administrative_sex"] == sex


def test_escapes_are_decoded_and_the_hl7_null_is_none() -> None:
    message = set_field(REFERRAL, b"PID", 13, b'""')
    parts = segments(message)
    parts.append(b"NTE|9|P|a\\.br\\b\\F\\c\\S\\d\\T\\e\\R\\f\\E\\g\\X41\\\\H\\h\\N\\")
    fields = record(join(parts)).fields

    assert fields["NTE"][-1]["comment"] == ["a\nb|c^d&e~f\\gAh"]
    assert fields["PID"]["phone_number_home"] == [None]


def test_the_same_message_in_lf_or_crlf_lines_reads_the_same() -> None:
    expected = record(REFERRAL).fields
    assert record(REFERRAL.replace(b"\r", b"\n")).fields == expected
    assert record(REFERRAL.replace(b"\r", b"\r\n")).fields == expected


def test_latin_1_is_read_when_msh_18_says_8859_1() -> None:
    text = REFERRAL.decode("utf-8").replace("UNICODE UTF-8", "8859/1")
    fields = record(text.encode("latin-1", "replace")).fields
    assert fields["MSH"]["character_set"] == ["8859/1"]


def test_escape_text_round_trips_through_the_reader() -> None:
    value = "a|b^c&d~e\\f"
    message = set_field(REFERRAL, b"NTE", 3, escape_text(value).encode())
    assert record(message).fields["NTE"][0]["comment"] == [value]


# -- malformed messages ------------------------------------------------------------------


def _move_pid_before_rf1(message: bytes) -> bytes:
    parts = segments(message)
    pid = next(s for s in parts if s[:3] == b"PID")
    parts.remove(pid)
    parts.insert(1, pid)
    return join(parts)


def _append(segment: bytes) -> Callable[[bytes], bytes]:
    return lambda message: join([*segments(message), segment])


def _cut_inside_pid(message: bytes) -> bytes:
    start = message.index(b"\rPID|") + 1
    return message[: start + 20]


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[bytes], bytes]
    outcome: type[NotMappable | Rejected]
    code: ErrorCode
    place: tuple[str, str] | None  # (segment, field)
    limits: Limits = DEFAULT_LIMITS


CASES = [
    Case("PID before RF1", _move_pid_before_rf1, NotMappable, ErrorCode.SEGMENT_SEQUENCE_ERROR,
         ("PID", "")),
    Case("a Z segment", _append(b"ZSV|1|Gonzalez"), NotMappable,
         ErrorCode.SEGMENT_SEQUENCE_ERROR, ("ZSV", "")),
    Case("an unknown segment", _append(b"QQQ|1|Gonzalez"), NotMappable,
         ErrorCode.SEGMENT_SEQUENCE_ERROR, None),
    Case("a segment of another structure", _append(b"OBX|1|ST|x||Gonzalez"), NotMappable,
         ErrorCode.SEGMENT_SEQUENCE_ERROR, ("OBX", "")),
    Case("a huge field", lambda m: set_field(m, b"NTE", 3, b"Gonzalez " * 200), NotMappable,
         ErrorCode.DATA_TYPE_ERROR, ("NTE", "NTE-3"), Limits(max_field_chars=1_000)),
    Case("a message over the size limit", lambda m: m, Rejected,
         ErrorCode.APPLICATION_INTERNAL_ERROR, None, Limits(max_message_bytes=500)),
    Case("too many segments", lambda m: m, Rejected, ErrorCode.APPLICATION_INTERNAL_ERROR,
         None, Limits(max_segments=5)),
    Case("MSH-2 with a repeated character", lambda m: set_field(m, b"MSH", 2, b"^^\\&"),
         Rejected, ErrorCode.DATA_TYPE_ERROR, ("MSH", "MSH-2")),
    Case("MSH-2 too short", lambda m: set_field(m, b"MSH", 2, b"^~"), Rejected,
         ErrorCode.DATA_TYPE_ERROR, ("MSH", "MSH-2")),
    Case("no MSH-10", lambda m: set_field(m, b"MSH", 10, b""), NotMappable,
         ErrorCode.REQUIRED_FIELD_MISSING, ("MSH", "MSH-10")),
    Case("version 2.3", lambda m: set_field(m, b"MSH", 12, b"2.3"), Rejected,
         ErrorCode.UNSUPPORTED_VERSION_ID, ("MSH", "MSH-12")),
    Case("ORU^R01", lambda m: set_field(m, b"MSH", 9, b"ORU^R01^ORU_R01"), Rejected,
         ErrorCode.UNSUPPORTED_MESSAGE_TYPE, ("MSH", "MSH-9")),
    Case("ADT^A03", lambda m: set_field(m, b"MSH", 9, b"ADT^A03"), Rejected,
         ErrorCode.UNSUPPORTED_EVENT_CODE, ("MSH", "MSH-9")),
    Case("REF^I12 said to be ADT_A01", lambda m: set_field(m, b"MSH", 9, b"REF^I12^ADT_A01"),
         Rejected, ErrorCode.UNSUPPORTED_MESSAGE_TYPE, ("MSH", "MSH-9")),
    Case("processing id X", lambda m: set_field(m, b"MSH", 11, b"X"), Rejected,
         ErrorCode.UNSUPPORTED_PROCESSING_ID, ("MSH", "MSH-11")),
    Case("an unsupported character set", lambda m: set_field(m, b"MSH", 18, b"ISO IR87"),
         NotMappable, ErrorCode.TABLE_VALUE_NOT_FOUND, ("MSH", "MSH-18")),
    Case("13th month in PID-7", lambda m: set_field(m, b"PID", 7, b"20021341"), NotMappable,
         ErrorCode.DATA_TYPE_ERROR, ("PID", "PID-7.1")),
    Case("30 February in PID-7", lambda m: set_field(m, b"PID", 7, b"20020230"), NotMappable,
         ErrorCode.DATA_TYPE_ERROR, ("PID", "PID-7.1")),
    Case("words in PID-7", lambda m: set_field(m, b"PID", 7, b"June 2002"), NotMappable,
         ErrorCode.DATA_TYPE_ERROR, ("PID", "PID-7.1")),
    Case("a letter in PID-1 (SI)", lambda m: set_field(m, b"PID", 1, b"x"), NotMappable,
         ErrorCode.DATA_TYPE_ERROR, ("PID", "PID-1")),
    Case("components in PID-8 (IS)", lambda m: set_field(m, b"PID", 8, b"F^Gonzalez"),
         NotMappable, ErrorCode.DATA_TYPE_ERROR, ("PID", "PID-8")),
    Case("repeats of PID-8", lambda m: set_field(m, b"PID", 8, b"F~M"), NotMappable,
         ErrorCode.DATA_TYPE_ERROR, ("PID", "PID-8")),
    Case("a field past PID-39", lambda m: set_field(m, b"PID", 40, b"Gonzalez"), NotMappable,
         ErrorCode.DATA_TYPE_ERROR, ("PID", "PID-40")),
    Case("a surname over 199 characters", lambda m: set_field(m, b"PID", 5, b"G" * 200),
         NotMappable, ErrorCode.DATA_TYPE_ERROR, ("PID", "PID-5.1.1")),
    Case("no PID-3", lambda m: set_field(m, b"PID", 3, b""), NotMappable,
         ErrorCode.REQUIRED_FIELD_MISSING, ("PID", "PID-3")),
    Case("no RF1-6", lambda m: set_field(m, b"RF1", 6, b""), NotMappable,
         ErrorCode.REQUIRED_FIELD_MISSING, ("RF1", "RF1-6")),
    Case("an unsupported escape", lambda m: set_field(m, b"NTE", 3, b"see \\Zsecret\\"),
         NotMappable, ErrorCode.DATA_TYPE_ERROR, ("NTE", "NTE-3")),
    Case("an unterminated escape", lambda m: set_field(m, b"NTE", 3, b"see \\F"),
         NotMappable, ErrorCode.DATA_TYPE_ERROR, ("NTE", "NTE-3")),
    Case("a bad hexadecimal escape", lambda m: set_field(m, b"NTE", 3, b"\\Xff\\"),
         NotMappable, ErrorCode.DATA_TYPE_ERROR, ("NTE", "NTE-3")),
    Case("bytes that are not UTF-8", lambda m: set_field(m, b"PID", 5, b"Gonz\xe1lez"),
         NotMappable, ErrorCode.DATA_TYPE_ERROR, ("PID", "")),
    Case("a NUL byte", lambda m: set_field(m, b"PID", 5, b"Gonz\x00lez"), NotMappable,
         ErrorCode.DATA_TYPE_ERROR, ("PID", "")),
    Case("a message cut inside PID", _cut_inside_pid, NotMappable,
         ErrorCode.REQUIRED_FIELD_MISSING, ("PID", "PID-5")),
    Case("a message cut before PID", lambda m: m[: m.index(b"\rPID|") + 1], NotMappable,
         ErrorCode.SEGMENT_SEQUENCE_ERROR, ("PID", "")),
    Case("no MSH", lambda m: m[m.index(b"\r") + 1 :], Rejected,
         ErrorCode.SEGMENT_SEQUENCE_ERROR, ("MSH", "")),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_malformed_message_is_refused_naming_the_place_never_a_value(case: Case) -> None:
    message = case.make(REFERRAL)
    found = problem(message, case.limits)

    assert isinstance(found.outcome, case.outcome), found.reason
    assert found.outcome.code == case.code, found.reason
    assert outcome_for(found) == found.outcome
    if case.place is None:
        assert found.places == () or found.outcome.place is None
    else:
        segment, name = case.place
        assert found.outcome.place == Place(segment=segment, field=name)
        assert found.places == (Place(segment=segment, field=name),)
    assert found.reason
    assert_shows_no(found.reason, message)
    assert b"Gonzalez" not in found.reason.encode()

    ack = read_ack(ack_for(message, found.outcome))
    assert ack.code == ("AE" if case.outcome is NotMappable else "AR")
    assert ack.err_code == f"{int(case.code)}^{ack.err_code.split('^')[1]}^HL70357"
    assert ack.err_severity == "E"
    if case.place is not None and case.place[0]:
        assert ack.err_location.split("^")[0] == case.place[0]
    if case.place is not None and case.place[1]:
        number = case.place[1].split("-")[1].split(".")[0]
        assert ack.err_location.split("^")[2] == number
    assert_shows_no(ack.raw, message)
    assert b"Gonzalez" not in ack.raw


def test_err_2_locates_the_component_and_the_occurrence_of_the_segment() -> None:
    parts = segments(REFERRAL)
    parts.append(b"NTE|9|P|bad \\Zx\\ escape")
    found = problem(join(parts))
    occurrence = sum(1 for s in parts if s[:3] == b"NTE")

    ack = read_ack(ack_for(REFERRAL, found.outcome))
    assert ack.err_location == f"NTE^{occurrence}^3"

    dated = problem(set_field(REFERRAL, b"PID", 7, b"20021341"))
    assert read_ack(ack_for(REFERRAL, dated.outcome)).err_location == "PID^1^7^^1"


def test_a_problem_keeps_its_bytes_but_a_locator_only_a_plain_control_id() -> None:
    message = set_field(REFERRAL, b"PID", 7, b"20021341")
    found = problem(message)
    assert found.origin.raw == message
    assert found.origin.locator == f"message (control id {field(message, b'MSH', 10).decode()})"

    hostile = set_field(message, b"MSH", 10, b"Gonzalez Lucia 2002")
    assert control_id_of(hostile) is None
    assert problem(hostile).origin.locator == "message (control id unreadable)"


# -- ACKs ---------------------------------------------------------------------------------


def test_original_mode_acks_echo_msh_10_and_swap_the_applications() -> None:
    ack = read_ack(ack_for(REFERRAL, Accepted()))

    assert ack.code == "AA"
    assert ack.control_id == field(REFERRAL, b"MSH", 10).decode()
    assert ack.msh9 == "ACK^I12^ACK"
    assert ack.err_code == ""
    msh = segments(ack.raw)[0].split(b"|")
    assert msh[2:6] == [b"CARE_GATEWAY", b"STMARYS", b"CASEMGR", b"HOPE_SHELTER"]
    assert msh[11] == b"2.5.1"


@pytest.mark.parametrize(
    ("outcome", "original", "enhanced"),
    [
        (Accepted(), "AA", "CA"),
        (NotMappable(None, ErrorCode.DATA_TYPE_ERROR, "bad"), "AE", "CE"),
        (Rejected(ErrorCode.APPLICATION_INTERNAL_ERROR, "failed"), "AR", "CR"),
    ],
)
def test_enhanced_mode_acks_when_msh_15_or_16_is_set(
    outcome: Accepted | NotMappable | Rejected, original: str, enhanced: str
) -> None:
    assert read_ack(ack_for(referral(7), outcome)).code == original
    assert read_ack(ack_for(referral(7, enhanced_ack=True), outcome)).code == enhanced
    only_15 = set_field(REFERRAL, b"MSH", 15, b"AL")
    assert read_ack(ack_for(only_15, outcome)).code == enhanced


def test_an_unknown_facility_is_answered_ar_naming_msh_4() -> None:
    outcome = Rejected(
        ErrorCode.UNKNOWN_KEY_IDENTIFIER,
        "unknown sending facility",
        Place(segment="MSH", field="MSH-4"),
    )
    ack = read_ack(ack_for(REFERRAL, outcome))

    assert (ack.code, ack.err_location, ack.err_severity) == ("AR", "MSH^1^4", "E")
    assert ack.err_code == "204^Unknown key identifier^HL70357"
    assert ack.err_text == "unknown sending facility"


def test_an_ack_is_written_even_for_garbage() -> None:
    for garbage in (b"", b"\x00\xff", b"not hl7 at all", b"MSH|"):
        ack = read_ack(ack_for(garbage, Rejected(ErrorCode.SEGMENT_SEQUENCE_ERROR, "no MSH")))
        assert ack.code == "AR"
        assert ack.control_id == ""


def test_an_ack_never_carries_delimiters_or_controls_from_the_message() -> None:
    message = set_field(REFERRAL, b"MSH", 10, b"A\\F\\B\x07C")
    ack = ack_for(message, Rejected(ErrorCode.DATA_TYPE_ERROR, "a|b^c\rd"))
    parsed = read_ack(ack)
    assert len(segments(ack)) == 3
    assert b"\x07" not in ack
    assert parsed.err_text == "a\\F\\b\\S\\c d"


# -- never an exception --------------------------------------------------------------------


def test_any_mutation_of_a_message_is_a_record_or_a_problem_that_shows_no_value() -> None:
    reach = Reach("hl7v2 mutations")

    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(
        base=st.sampled_from([REFERRAL, REGISTRATION]),
        at=st.integers(min_value=0, max_value=2_000),
        cut=st.integers(min_value=0, max_value=40),
        insert=st.binary(max_size=20) | st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r"]),
    )
    def holds(base: bytes, at: int, cut: int, insert: bytes) -> None:
        reach.example()
        position = at % len(base)
        message = base[:position] + insert + base[position + cut :]
        parsed = parse_message(message)
        assert isinstance(parsed, SourceRecord | SourceProblem)
        if isinstance(parsed, SourceRecord):
            return
        reach.hit()
        assert isinstance(parsed, Hl7Problem)
        assert_shows_no(parsed.reason, base)
        ack = read_ack(ack_for(message, parsed.outcome))
        assert ack.code in ("AE", "AR", "CE", "CR")
        assert_shows_no(ack.raw, base)

    holds()
    reach.check(minimum=0.3)
