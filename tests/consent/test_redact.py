"""Redaction applies a decision's obligations to a copy of the resource."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.consent.policy import Obligation, load_policy
from gateway.consent.redact import may_change, redact
from gateway.store.records import canonical
from gateway.vocabulary.security import INLINE_LABEL
from tests.support.reach import Reach

POLICY = load_policy(Path(__file__).resolve().parents[2] / "consent_policies")
RULES = {r.id: r.obligation for r in POLICY.redactions}
LOCIS = {
    "url": INLINE_LABEL,
    "valueCoding": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "LOCIS"},
}


def survivor() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "3"},
        "name": [{"family": "Núñez", "given": ["Ana"]}],
        "telecom": [{"system": "phone", "value": "555-0100"}],
        "address": [{"line": ["14 Harbor Lane"], "city": "Riverside"}],
        "contact": [{"name": {"text": "Sister"}}],
        "birthDate": "1994-03-02",
        "_birthDate": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
    }


def test_remove_strips_patient_contact_details_and_marks_the_copy_redacted() -> None:
    original = survivor()
    before = copy.deepcopy(original)
    shown = redact(original, [RULES["patient-contact-details"]])
    assert original == before  # pure
    assert set(shown) == {"resourceType", "id", "meta", "name", "birthDate", "_birthDate"}
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "REDACTED",
        "display": "redacted",
    } in shown["meta"]["security"]


def test_nothing_removed_means_no_redacted_mark() -> None:
    doc = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Núñez"}]}
    assert redact(doc, [RULES["patient-contact-details"]]) == doc


def test_nested_paths_and_emptied_containers_are_removed() -> None:
    plan = {
        "resourceType": "CarePlan",
        "id": "cp1",
        "activity": [
            {"detail": {"location": {"reference": "Location/safe-house"}}},
            {"detail": {"status": "scheduled", "location": {"display": "Riverside"}}},
        ],
    }
    shown = redact(plan, [RULES["shelter-locations"]])
    assert shown["activity"] == [{"detail": {"status": "scheduled"}}]


def test_primitive_and_its_extension_go_together() -> None:
    ob = Obligation("x", "remove", elements=("birthDate",))
    shown = redact(survivor(), [ob])
    assert "birthDate" not in shown
    assert "_birthDate" not in shown


def test_remove_labelled_strips_inline_locis_elements_wherever_they_are() -> None:
    doc: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "note": [{"text": "Pick-up at the safe house", "extension": [LOCIS]}, {"text": "Bring ID"}],
        "locationCode": [{"text": "Shelter B", "extension": [LOCIS]}],
        "occurrenceDateTime": "2026-12-01",
        "_occurrenceDateTime": {"extension": [LOCIS]},
        "reasonCode": [{"text": "Housing"}],
    }
    shown = redact(doc, [RULES["location-labelled-elements"]])
    assert shown["note"] == [{"text": "Bring ID"}]
    assert "locationCode" not in shown
    assert "occurrenceDateTime" not in shown
    assert "_occurrenceDateTime" not in shown
    assert shown["reasonCode"] == [{"text": "Housing"}]


def test_remove_labelled_handles_primitive_lists() -> None:
    doc = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"given": ["Ana", "Casa Azul"], "_given": [None, {"extension": [LOCIS]}]}],
    }
    shown = redact(doc, [RULES["location-labelled-elements"]])
    assert shown["name"] == [{"given": ["Ana"]}]


def test_notice_adds_nordsclcd_once() -> None:
    notice = RULES["part2-redisclosure-notice"]
    shown = redact(redact({"resourceType": "CarePlan", "id": "cp1"}, [notice]), [notice])
    assert [c["code"] for c in shown["meta"]["security"]] == ["NORDSCLCD"]
    assert notice.text
    assert "42 CFR part 2" in notice.text


def test_unknown_obligation_stops_the_disclosure() -> None:
    with pytest.raises(ValueError, match="unknown action"):
        redact({"resourceType": "CarePlan"}, [Obligation("x", "encrypt")])


# An element name the policy's obligations touch, or an ordinary one, at any depth.
KEYS = st.sampled_from(
    ["address", "_address", "telecom", "contact", "locationCode", "location", "note", "text",
     "activity", "detail", "line", "extension", "given", "_given"]
)  # fmt: skip
LEAVES = st.one_of(
    st.text(max_size=8), st.booleans(), st.none(), st.just(LOCIS), st.just("address")
)
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12,
)


def test_an_obligation_that_may_not_change_a_body_leaves_it_exactly_as_it_was() -> None:
    """Releases skip parsing when ``may_change`` says no: it must never say no wrongly."""
    reach = Reach("may_change said no, and redact changed nothing")

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(
        body=st.dictionaries(KEYS, JSON, max_size=4),
        rule=st.sampled_from(sorted(RULES)),
    )
    def never_wrongly_no(body: dict[str, Any], rule: str) -> None:
        reach.example()
        doc = {"resourceType": "Patient", "id": "p1", **body}
        obligation = RULES[rule]
        if not may_change(canonical(doc), obligation):
            reach.hit()
            assert redact(doc, [obligation]) == doc

    never_wrongly_no()
    reach.check(minimum=0.55)  # 191/300 of the derandomized bodies get a "no"
