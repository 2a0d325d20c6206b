"""The FHIR mappings (``mappings/fhir/``): a hospital's Patient, ServiceRequest and CarePlan are
FHIR already, and still only an allow-list of their elements is stored. Goldens in
``golden/fhir/`` (the format of ``golden/hmis-csv/``); every output is strict R4 once its
placeholders are resolved; narrative, contained resources, extensions, addresses and contacts
never come through; security labels always do, or the record does not."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.consent.labels import labels_for
from gateway.mapping import PREFIX, MappingContext, SourceKey
from gateway.synth.fhir import hospital_resources
from gateway.vocabulary.source import Origin, SourceRecord
from gateway.write.admit import check
from tests.mapping.support import GOLDEN, dumps, label_tables, mappings, record_from_json, resolved

FHIR = GOLDEN / "fhir"
HOSPITAL = MappingContext(partner_id="metro-general", partner_kind="hospital")
CASES = sorted(p.name.removesuffix(".input.json") for p in FHIR.glob("*.input.json"))


def load(case: str, kind: str) -> Any:
    return json.loads((FHIR / f"{case}.{kind}.json").read_text(encoding="utf-8"))


def pulled(doc: dict[str, Any]) -> SourceRecord:
    return SourceRecord(
        "fhir", doc["resourceType"], doc["id"], doc, Origin(doc["resourceType"], "page 1"), "R4"
    )


def mapped_one(doc: dict[str, Any]) -> dict[str, Any]:
    out = mappings().apply(pulled(doc), HOSPITAL)
    assert not out.problems
    (resource,) = out.resources
    return resource.resource


def test_the_goldens_cover_every_fhir_record_type_and_the_refusals() -> None:
    types = {load(case, "input")["record_type"] for case in CASES}
    assert types == {"Patient", "ServiceRequest", "CarePlan"}
    assert {m.record_type for m in mappings() if m.system == "fhir"} == types
    assert any(any(p["blocking"] for p in load(c, "expected")["problems"]) for c in CASES)
    names = {p.name for p in FHIR.iterdir()}
    assert names == {f"{c}.{k}.json" for c in CASES for k in ("input", "expected")}


@pytest.mark.parametrize("case", CASES)
def test_mapping_gives_exactly_the_golden_output(case: str) -> None:
    mapped = mappings().apply(record_from_json(load(case, "input")), HOSPITAL)
    assert mapped.as_json() == load(case, "expected")


@pytest.mark.parametrize("case", CASES)
def test_golden_resources_pass_the_write_gate_once_placeholders_are_resolved(case: str) -> None:
    for item in load(case, "expected")["resources"]:
        doc = item["resource"]
        assert "id" not in doc
        local = resolved(doc)
        assert PREFIX not in dumps(local)
        check(local)


@pytest.mark.parametrize("case", CASES)
def test_a_golden_record_with_a_blocking_problem_has_no_resources(case: str) -> None:
    expected = load(case, "expected")
    if any(p["blocking"] for p in expected["problems"]):
        assert expected["resources"] == []
    else:
        assert expected["resources"]


# What the inputs carry and the outputs must not: narrative, contained, extension values,
# addresses, contacts, photos, identifiers without a system, practitioners not pulled.
NEVER = (
    "Narrative-Secret",
    "xhtml",
    "Contained-",
    "Hidden-Shelter",
    "Maple St",
    "Abernathy-Contact",
    "+1-202-555-0199",
    "iVBORw0KGgo",
    "NO-SYSTEM-4471",
    "approximate",
    "wren-say",
    "Practitioner/",
    "Appointment/",
    "Partner shelter",
    "us-core-birthsex",
    "lastUpdated",
    "versionId",
)


@pytest.mark.parametrize("case", CASES)
def test_what_the_gateway_does_not_take_is_nowhere_in_the_output(case: str) -> None:
    source = dumps(load(case, "input"))
    output = dumps(load(case, "expected"))
    carried = [secret for secret in NEVER if secret in source]
    assert carried  # the case really carries something to drop
    for secret in carried:
        assert secret not in output, secret


def test_the_full_case_really_carries_what_is_dropped() -> None:
    source = dumps(load("patient-full", "input"))
    for secret in ("xhtml", "Contained-Kin", "Maple St", "Abernathy-Contact", "wren-say"):
        assert secret in source


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


@pytest.mark.parametrize("case", CASES)
def test_golden_problems_quote_no_source_value(case: str) -> None:
    problems = dumps(load(case, "expected")["problems"])
    for value in _strings(load(case, "input")["fields"]):
        if len(value) >= 4 and value not in {"code", "Patient", "ServiceRequest", "reference"}:
            assert value not in problems


def test_security_labels_are_kept_and_an_unreadable_one_blocks_the_record() -> None:
    kept = load("patient-full", "expected")["resources"][0]["resource"]["meta"]["security"]
    assert [c["code"] for c in kept] == ["R", "SDV"]
    refused = load("patient-unreadable-security-label", "expected")
    assert refused["resources"] == []
    assert refused["problems"][0]["place"]["field"] == "meta.security[2].code"


def test_references_to_pulled_records_become_placeholders_and_others_are_dropped() -> None:
    plan = load("careplan-activities", "expected")["resources"][0]["resource"]
    assert plan["subject"] == {"reference": "urn:care-gateway:source:Patient:Patient:pat-00001"}
    assert plan["author"] == {"reference": "Organization/metro-general"}
    assert plan["activity"][0] == {
        "reference": {"reference": "urn:care-gateway:source:ServiceRequest:ServiceRequest:sr-00001"}
    }
    assert len(plan["activity"]) == 2  # the Appointment and the status-less detail: dropped
    referral = load("servicerequest-trafficking-referral", "expected")["resources"][0]
    assert referral["resource"]["requester"] == {"reference": "Organization/metro-general"}
    assert "performer" not in referral["resource"]
    assert mappings().apply(
        record_from_json(load("servicerequest-trafficking-referral", "input")), HOSPITAL
    ).resources[0].key == SourceKey("ServiceRequest", "ServiceRequest", "sr-00001")


@pytest.mark.parametrize(
    "reference",
    [
        "https://other.example/fhir/Patient/p1",
        "Group/g1",
        "#contained",
        "Patient/has space",
        "Patient/p1/_history/2",
        "Patient/",
    ],
)
def test_a_subject_that_is_not_a_patient_on_the_same_server_blocks_the_referral(
    reference: str,
) -> None:
    doc = next(r for r in hospital_resources(3, seed=2) if r["resourceType"] == "ServiceRequest")
    doc["subject"] = {"reference": reference}
    out = mappings().apply(pulled(doc), HOSPITAL)
    assert out.resources == []
    assert [p.element for p in out.problems] == ["ServiceRequest.subject"]
    assert reference not in dumps([p.reason for p in out.problems])


def test_a_trafficking_referral_is_labelled_sdv_by_the_network_tables() -> None:
    doc = load("servicerequest-trafficking-referral", "expected")["resources"][0]["resource"]
    labels = labels_for(resolved(doc), contributor_kind="hospital", tables=label_tables())
    assert "SDV" in {c.get("code") for c in labels}


def test_every_synthetic_hospital_resource_maps_to_one_strict_r4_resource() -> None:
    resources = hospital_resources(300, seed=5)
    for doc in resources:
        local = resolved(mapped_one(doc))
        check(local)
        assert not {"text", "contained", "extension", "address", "id"} & local.keys()


def test_the_mapping_cost_of_the_reference_expression_is_measured() -> None:
    """Not a timed assertion: prints µs per resource (docs/fhir-pull.md quotes it)."""
    docs = hospital_resources(300, seed=9)
    records = [pulled(d) for d in docs]
    start = time.perf_counter()
    for record in records:
        mappings().apply(record, HOSPITAL)
    spent = time.perf_counter() - start
    print(f"\nfhir mapping: {spent / len(records) * 1e6:.1f} us per resource")
    assert all(mappings().apply(r, HOSPITAL).resources for r in records)


def test_the_golden_directory_sits_beside_the_hmis_one() -> None:
    assert Path(GOLDEN / "hmis-csv").is_dir()
    assert FHIR.is_dir()
