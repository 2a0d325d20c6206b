"""Golden tests: a mapping change is a data change, and shows here as a changed expected file.

Each ``golden/<system>/<case>.input.json`` is a SourceRecord as its adapter yields it (HMIS CSV,
HL7 v2 ``fields`` as ``adapters.hl7v2.parse_message`` gives them, LegalServer matters as the
adapter normalises them), with the partner it comes from (``context``: id, kind, the network's
Organizations; none for HMIS: the shelter); ``<case>.expected.json`` is the exact ``Mapped``
output (resources and problems). To change a mapping, change the spec, then the expected files,
and review the diff like code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.mapping import PREFIX, rewrite_placeholders
from gateway.write.admit import check
from tests.mapping.golden_support import fake_local
from tests.mapping.support import (
    GOLDEN,
    apply,
    context_from_json,
    dumps,
    mappings,
    record_from_json,
    resolved,
    validate_r4,
)

CASES = sorted(
    p.name.removesuffix(".input.json") for p in (GOLDEN / "hmis-csv").glob("*.input.json")
)
# The goldens of the other shipped systems (fhir/ has its own test, test_fhir_mappings.py).
SYSTEMS = ("hl7v2", "legalserver")
OTHER_CASES = [
    (system, p.name.removesuffix(".input.json"))
    for system in SYSTEMS
    for p in sorted((GOLDEN / system).glob("*.input.json"))
]


def load(case: str, kind: str, system: str = "hmis-csv") -> Any:
    return json.loads((GOLDEN / system / f"{case}.{kind}.json").read_text(encoding="utf-8"))


def test_golden_cases_cover_both_hmis_versions_and_every_record_type() -> None:
    inputs = [load(case, "input") for case in CASES]
    seen = {(doc["record_type"], doc["version"]) for doc in inputs}
    assert {("Client", "FY2024"), ("Client", "FY2026")} <= seen
    hmis = {m.record_type for m in mappings() if m.system == "hmis-csv"}
    assert hmis == {doc["record_type"] for doc in inputs}
    enrollment = load("enrollment-fy2026-exit-dv-trafficking", "input")["fields"]
    assert len(enrollment["Services"]) == 3
    assert enrollment["Exit"]
    assert enrollment["HealthAndDV"]
    assert load("roi-revoked", "input")["fields"]["RevokedDate"]
    for case in CASES:
        assert (GOLDEN / "hmis-csv" / f"{case}.expected.json").exists(), case


@pytest.mark.parametrize("case", CASES)
def test_mapping_gives_exactly_the_golden_output(case: str) -> None:
    mapped = apply(record_from_json(load(case, "input")))
    assert mapped.as_json() == load(case, "expected")


@pytest.mark.parametrize("case", CASES)
def test_golden_resources_are_strict_r4_once_placeholders_are_resolved(case: str) -> None:
    for item in load(case, "expected")["resources"]:
        doc = item["resource"]
        assert "id" not in doc  # the pipeline gives the id, from the key
        assert item["key"][0] == doc["resourceType"]
        local = resolved(doc)
        assert PREFIX not in dumps(local)  # every placeholder was one the helper parses
        validate_r4(local)


@pytest.mark.parametrize("case", CASES)
def test_a_golden_record_with_a_blocking_problem_has_no_resources(case: str) -> None:
    expected = load(case, "expected")
    if any(p["blocking"] for p in expected["problems"]):
        assert expected["resources"] == []
    else:
        assert expected["resources"]


NEVER_MAPPED = {
    "SSN",
    "SSNDataQuality",
    "AdditionalRaceEthnicity",
    "DifferentIdentityText",
    "LocationDetails",
    "VerifiedBy",
    "ProjectName",
    "ProjectCommonName",
    "OtherTypeProvided",
    "OtherDestination",
    "EnrollmentCoC",
}


def _cells(node: Any, name: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [c for k, v in node.items() for c in _cells(v, k)]
    if isinstance(node, list):
        return [c for v in node for c in _cells(v, name)]
    return [(name, node)] if isinstance(node, str) else []


@pytest.mark.parametrize("case", CASES)
def test_never_mapped_fields_are_nowhere_in_the_output(case: str) -> None:
    fields = load(case, "input")["fields"]
    output = dumps(load(case, "expected"))
    secrets = [v for name, v in _cells(fields) if name in NEVER_MAPPED and len(v) >= 3]
    for value in secrets:
        assert value not in output
    if case == "enrollment-fy2026-exit-dv-trafficking":
        assert len(secrets) >= 6  # the case really carries whereabouts, names and free text


@pytest.mark.parametrize("case", CASES)
def test_golden_problems_quote_no_source_value(case: str) -> None:
    doc = load(case, "input")
    problems = dumps(load(case, "expected")["problems"])
    for _name, value in _cells(doc["fields"]):
        if len(value) >= 3:
            assert value not in problems


def test_the_golden_directory_holds_only_case_pairs() -> None:
    names = {p.name for p in Path(GOLDEN / "hmis-csv").iterdir()}
    assert names == {f"{c}.{k}.json" for c in CASES for k in ("input", "expected")}


# --- HL7 v2 and LegalServer -------------------------------------------------------------------


def _ids(params: list[tuple[str, str]]) -> list[str]:
    return [f"{system}/{case}" for system, case in params]


@pytest.mark.parametrize(("system", "case"), OTHER_CASES, ids=_ids(OTHER_CASES))
def test_hl7_and_legalserver_mappings_give_exactly_the_golden_output(
    system: str, case: str
) -> None:
    doc = load(case, "input", system)
    mapped = apply(record_from_json(doc), context_from_json(doc))
    assert mapped.as_json() == load(case, "expected", system)


@pytest.mark.parametrize(("system", "case"), OTHER_CASES, ids=_ids(OTHER_CASES))
def test_every_hl7_and_legalserver_golden_resource_passes_the_write_gate(
    system: str, case: str
) -> None:
    """Placeholders replaced by local references, each resource is what
    ``gateway.write.admit.check`` (strict R4) accepts."""
    expected = load(case, "expected", system)
    for item in expected["resources"]:
        doc = item["resource"]
        assert "id" not in doc
        assert item["key"][0] == doc["resourceType"]
        local = rewrite_placeholders(doc, fake_local)
        assert PREFIX not in dumps(local)
        check(local)


@pytest.mark.parametrize(("system", "case"), OTHER_CASES, ids=_ids(OTHER_CASES))
def test_an_hl7_or_legalserver_golden_blocks_all_or_nothing(system: str, case: str) -> None:
    expected = load(case, "expected", system)
    if any(p["blocking"] for p in expected["problems"]):
        assert expected["resources"] == []
    else:
        assert expected["resources"]


@pytest.mark.parametrize(("system", "case"), OTHER_CASES, ids=_ids(OTHER_CASES))
def test_hl7_and_legalserver_problems_quote_no_source_value(system: str, case: str) -> None:
    doc = load(case, "input", system)
    problems = dumps(load(case, "expected", system)["problems"])
    values = [v for _name, v in _cells(doc["fields"]) if len(v) >= 3]
    assert values
    for value in values:
        assert value not in problems


def test_the_hl7_and_legalserver_golden_directories_hold_only_case_pairs() -> None:
    for system in SYSTEMS:
        cases = [c for s, c in OTHER_CASES if s == system]
        names = {p.name for p in (GOLDEN / system).iterdir()}
        assert names == {f"{c}.{k}.json" for c in cases for k in ("input", "expected")}
    shipped = {(m.system, m.record_type) for m in mappings() if m.system in SYSTEMS}
    covered = {(load(c, "input", s)["system"], load(c, "input", s)["record_type"])
               for s, c in OTHER_CASES}  # fmt: skip
    assert (
        shipped
        == covered
        == {
            ("hl7v2", "ADT_A01"),
            ("hl7v2", "REF_I12"),
            ("legalserver", "matter"),
        }
    )
