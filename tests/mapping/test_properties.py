"""Properties of the shipped mappings over arbitrary field values: mapping never raises (nor falls
back on its last-resort internal-error problem), and no problem ever carries a source value."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mapping import Mapped, MappingProblem
from tests.mapping.support import apply, record

MARK = "\u27ea"  # a character no spec, table or reason contains: a value carrying it is traceable

CLIENT_COLUMNS = [
    "PersonalID", "FirstName", "MiddleName", "LastName", "NameSuffix", "NameDataQuality", "SSN",
    "SSNDataQuality", "DOB", "DOBDataQuality", "Sex", "Woman", "Man", "NonBinary",
    "CulturallySpecific", "Transgender", "Questioning", "DifferentIdentity", "GenderNone",
    "DifferentIdentityText", "AdditionalRaceEthnicity", "HispanicLatinao",
]  # fmt: skip
ENROLLMENT_COLUMNS = ["EnrollmentID", "PersonalID", "EntryDate", "EnrollmentCoC", "DateDeleted"]
SERVICE_COLUMNS = ["DateProvided", "RecordType", "TypeProvided", "OtherTypeProvided", "DateDeleted"]
EXIT_COLUMNS = [
    "ExitDate", "OtherDestination", "ExchangeForSex", "ExchangeForSexPastThreeMonths",
    "AskedOrForcedToExchangeForSex", "AskedOrForcedToExchangeForSexPastThreeMonths",
    "WorkPlaceViolenceThreats", "WorkplacePromiseDifference", "CoercedToContinueWork",
    "LaborExploitPastThreeMonths",
]  # fmt: skip
DV_COLUMNS = ["DomesticViolenceSurvivor", "CurrentlyFleeing", "WhenOccurred"]
ROI_COLUMNS = [
    "ROIID", "PersonalID", "RecipientOrganization", "Scope", "Purposes", "StartDate", "EndDate",
    "SignedFormReference", "RevokedDate", "DateCreated",
]  # fmt: skip

# Values the specs recognise, so that examples also map (and problems are checked next to
# resources), mixed with arbitrary text, and with arbitrary text carrying MARK.
KNOWN = st.sampled_from(
    ["0", "1", "2", "8", "9", "99", "200", "142", "14", "17", "2026-10-02", "2027-01-15 10:00:00",
     "TREAT;COC", "CarePlan;Patient", "harbor-clinic", "https://records.example/r/1.pdf", "CL-1",
     ""]
)  # fmt: skip
ARBITRARY = st.text(max_size=24)
MARKED = st.builds(lambda a, b: f"{a}{MARK}{b}", st.text(max_size=8), st.text(max_size=8))
VALUE = st.one_of(KNOWN, KNOWN, ARBITRARY, MARKED)


def row(columns: list[str], **likely: str) -> st.SearchStrategy[dict[str, Any]]:
    """Some of the columns, arbitrary values; ``likely`` columns are there with a usable value
    more often than not (so that records also map, not only fail)."""
    rest = st.dictionaries(st.sampled_from(columns), VALUE, max_size=len(columns))
    usual = st.fixed_dictionaries(
        {name: st.one_of(st.just(value), st.just(value), VALUE) for name, value in likely.items()}
    )
    return st.builds(lambda a, b: {**a, **b}, rest, usual)


ROWS = st.one_of(st.lists(row(SERVICE_COLUMNS), max_size=3), VALUE, st.lists(VALUE, max_size=2))
CLIENT = row(CLIENT_COLUMNS, PersonalID="CL-1")
ENROLLMENT = st.builds(
    lambda base, services, exit_row, dv, project: {
        **base,
        "Services": services,
        "Exit": exit_row,
        "HealthAndDV": dv,
        "Project": project,
        "CurrentLivingSituation": [{"LocationDetails": f"{MARK}behind the depot"}],
    },
    row(ENROLLMENT_COLUMNS, PersonalID="CL-1", EntryDate="2026-10-02"),
    ROWS,
    st.one_of(st.none(), row(EXIT_COLUMNS), VALUE),
    st.one_of(st.lists(row(DV_COLUMNS), max_size=3), VALUE),
    st.one_of(st.none(), st.fixed_dictionaries({"ProjectType": VALUE, "ProjectName": MARKED})),
)
ROI = row(
    ROI_COLUMNS,
    PersonalID="CL-1",
    RecipientOrganization="harbor-clinic",
    Scope="CarePlan",
    Purposes="TREAT",
    StartDate="2026-11-20",
    SignedFormReference="https://records.example/r/1.pdf",
)

PHRASES = re.compile(
    r"(is not text|contains control characters|is not a code \(no inner runs of spaces\)"
    r"|is not a date \(yyyy-mm-dd\)|is not a FHIR id|is not a URI \(contains spaces\)|is missing"
    r"|maps to no value|value is not in code table [a-z0-9.-]+"
    r"|value of code table [a-z0-9.-]+ is not defined in this source version"
    r"|(expression|condition) failed \([A-Za-z0-9]+\)|cannot be used as a source id"
    r"|is not a list of rows|row is not a record)"
)
NAME = r"[A-Za-z][A-Za-z0-9_]*(\[\d*\])?"
PATH = re.compile(rf"({NAME})(\.{NAME})*(\+{NAME}(\.{NAME})*)*")


def assert_names_only(problem: MappingProblem) -> None:
    """A reason is ``[<field path>: ]<phrase>``; places are file, row and field paths: all of
    them spec vocabulary, so no source value can be in them."""
    name, sep, phrase = problem.reason.rpartition(": ")
    assert PHRASES.fullmatch(phrase if sep else problem.reason), problem.reason
    if sep:
        assert PATH.fullmatch(name), problem.reason
    for part in (problem.place.column, problem.place.field):
        assert part == "" or PATH.fullmatch(part), part
    assert problem.element == "" or re.fullmatch(
        r"[A-Z][A-Za-z]+(\.[a-z][A-Za-z]*)*", problem.element
    )
    assert problem.place.file.endswith(".csv")
    assert problem.place.row == 2


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def check(mapped: Mapped, fields: dict[str, Any], seen: dict[str, int]) -> None:
    assert not any("internal error" in p.reason for p in mapped.problems)
    text = "\n".join(
        f"{p.reason}|{p.element}|{p.place.column}|{p.place.field}|{p.place.file}"
        for p in mapped.problems
    )
    for problem in mapped.problems:
        assert_names_only(problem)
    for value in strings(fields):
        if MARK in value:
            assert value not in text
            assert MARK not in text
    if mapped.blocked:
        assert mapped.resources == []
    seen["problems"] += bool(mapped.problems)
    seen["resources"] += bool(mapped.resources)
    seen["marked"] += any(MARK in v for v in strings(fields))


def test_arbitrary_field_values_never_raise_and_never_reach_a_problem() -> None:
    seen = {"problems": 0, "resources": 0, "marked": 0}

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        kind=st.sampled_from(["Client", "Enrollment", "ReleaseOfInformation"]),
        version=st.sampled_from(["FY2024", "FY2026"]),
        client=CLIENT,
        enrollment=ENROLLMENT,
        roi=ROI,
    )
    def mapping_holds(kind: str, version: str, client: Any, enrollment: Any, roi: Any) -> None:
        fields = {"Client": client, "Enrollment": enrollment, "ReleaseOfInformation": roi}[kind]
        mapped = apply(record(kind, "SRC-1", fields, version=version))
        check(mapped, fields, seen)

    mapping_holds()
    # The property was exercised, not vacuously true: records with problems, records that
    # mapped, and records carrying traceable values all reached the assertions.
    assert seen["problems"] > 20, seen
    assert seen["resources"] > 20, seen
    assert seen["marked"] > 20, seen
