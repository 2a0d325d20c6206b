"""Write-time security labels from the shipped code tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.consent.labels import labels_for, load_label_tables, tables_from_dict

TABLES = load_label_tables(Path(__file__).resolve().parents[2] / "consent_policies")
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def referral(system: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": SCT, "code": "308440001"}]},
        "reasonCode": [{"coding": [{"system": system, "code": code}]}],
        **extra,
    }


def codes(labels: list[dict[str, Any]], system: str = ACTCODE) -> set[str]:
    return {c["code"] for c in labels if c.get("system") == system}


@pytest.mark.parametrize(
    ("system", "code", "label"),
    [
        (ICD, "F10.20", "ETH"),
        (ICD, "F1120", "ETH"),  # dotless
        (ICD, "f19.10", "ETH"),  # lower case
        (ICD, "Z71.41", "ETH"),
        (SCT, "66590003", "ETH"),
        (ICD, "F43.10", "PSY"),
        (ICD, "F32.1", "PSY"),
        (ICD, "R45.851", "PSY"),
        (SCT, "75516001", "PSY"),
        (ICD, "T74.51XA", "SDV"),
        (ICD, "T74.61XA", "SDV"),
        (ICD, "T76.51XA", "SDV"),
        (ICD, "T76.61XA", "SDV"),
        (ICD, "Z04.81", "SDV"),
        (ICD, "Z04.82", "SDV"),
        (ICD, "Z62.813", "SDV"),
        (ICD, "Z91.42", "SDV"),
    ],
)
def test_code_tables_set_the_sensitivity(system: str, code: str, label: str) -> None:
    assert label in codes(
        labels_for(referral(system, code), contributor_kind="clinic", tables=TABLES)
    )


@pytest.mark.parametrize(
    ("system", "code"),
    [
        (ICD, "F17.210"),  # nicotine: not a Part 2 SUD
        (ICD, "F03.90"),  # dementia
        (ICD, "F84.0"),  # autism
        (SCT, "409063005"),  # counseling, on its own
        (ICD, "J45.909"),
        ("http://example.org/local", "F10.20"),  # an F10 in another system is not ICD-10
    ],
)
def test_codes_outside_the_tables_set_nothing(system: str, code: str) -> None:
    labels = labels_for(referral(system, code), contributor_kind="clinic", tables=TABLES)
    assert labels == []


def test_writer_labels_are_kept_and_not_duplicated() -> None:
    doc = referral(
        ICD,
        "F10.20",
        meta={
            "security": [
                {"system": ACTCODE, "code": "ETH"},
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"},
                {"system": CONF, "code": "V"},
            ]
        },
    )
    labels = labels_for(doc, contributor_kind="shelter", tables=TABLES)
    assert labels[:3] == doc["meta"]["security"]
    assert codes(labels) == {"ETH", "HIV"}
    assert codes(labels, CONF) == {"V"}  # never lowered to R


def test_shelter_data_is_restricted_and_a_normal_confidentiality_is_raised() -> None:
    doc = referral(SCT, "308440001", meta={"security": [{"system": CONF, "code": "N"}]})
    labels = labels_for(doc, contributor_kind="shelter", tables=TABLES)
    assert codes(labels, CONF) == {"R"}


def test_clinic_data_without_sensitive_codes_gets_no_confidentiality() -> None:
    assert labels_for(referral(SCT, "308440001"), contributor_kind="clinic", tables=TABLES) == []


def test_sensitive_clinic_data_is_restricted() -> None:
    labels = labels_for(referral(ICD, "F43.10"), contributor_kind="clinic", tables=TABLES)
    assert codes(labels) == {"PSY"}
    assert codes(labels, CONF) == {"R"}


def test_shelter_patient_address_is_location_sensitive() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "address": [{"city": "Riverside"}]}
    assert "LOCIS" in codes(labels_for(patient, contributor_kind="shelter", tables=TABLES))
    assert "LOCIS" not in codes(labels_for(patient, contributor_kind="clinic", tables=TABLES))
    no_address = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Núñez"}]}
    assert "LOCIS" not in codes(labels_for(no_address, contributor_kind="shelter", tables=TABLES))


def test_shelter_resource_pointing_at_a_location_is_location_sensitive() -> None:
    doc = referral(SCT, "308440001", locationReference=[{"reference": "Location/safe-house-2"}])
    assert "LOCIS" in codes(labels_for(doc, contributor_kind="shelter", tables=TABLES))
    plan = {
        "resourceType": "CarePlan",
        "id": "cp1",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "activity": [
            {"detail": {"status": "scheduled", "location": {"display": "Riverside house"}}}
        ],
    }
    assert "LOCIS" in codes(labels_for(plan, contributor_kind="shelter", tables=TABLES))


def test_codes_a_consent_governs_do_not_label_the_consent() -> None:
    consent = {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "provision": {"type": "deny", "code": [{"coding": [{"system": ICD, "code": "F10.20"}]}]},
    }
    assert labels_for(consent, contributor_kind="clinic", tables=TABLES) == []


# Labels that cannot be dodged: a code system is compared by canonical URI, so an alias of
# ICD-10-CM or SNOMED CT (its OID, https, a trailing slash, an upper-case host) labels alike.
ICD_OID = "urn:oid:2.16.840.1.113883.6.90"
SCT_OID = "urn:oid:2.16.840.1.113883.6.96"


@pytest.mark.parametrize(
    "system",
    [
        ICD_OID,
        "URN:OID:2.16.840.1.113883.6.90",
        "2.16.840.1.113883.6.90",
        "https://hl7.org/fhir/sid/icd-10-cm",
        "http://hl7.org/fhir/sid/icd-10-cm/",
        "http://HL7.ORG/fhir/sid/icd-10-cm",
    ],
)
def test_an_icd10cm_substance_use_code_under_an_alias_of_its_system_is_eth(system: str) -> None:
    labels = labels_for(referral(system, "F11.20"), contributor_kind="clinic", tables=TABLES)
    assert codes(labels) == {"ETH"}
    assert codes(labels, CONF) == {"R"}


@pytest.mark.parametrize(
    ("code", "label"),
    [("F43.10", "PSY"), ("T74.51XA", "SDV"), ("Z71.41", "ETH"), ("F1020", "ETH")],
)
def test_icd10cm_oid_codes_get_the_labels_of_their_uri(code: str, label: str) -> None:
    labels = labels_for(referral(ICD_OID, code), contributor_kind="clinic", tables=TABLES)
    assert codes(labels) == {label}


@pytest.mark.parametrize(
    ("code", "label"),
    [("66590003", "ETH"), ("75544000", "ETH"), ("75516001", "PSY"), ("47505003", "PSY")],
)
def test_snomed_oid_codes_get_their_labels(code: str, label: str) -> None:
    for system in (SCT_OID, "https://snomed.info/sct/"):
        labels = labels_for(referral(system, code), contributor_kind="clinic", tables=TABLES)
        assert codes(labels) == {label}, system


def test_an_icd10_who_code_under_its_oid_is_labelled() -> None:
    doc = referral("urn:oid:2.16.840.1.113883.6.3", "F11.2")
    assert codes(labels_for(doc, contributor_kind="clinic", tables=TABLES)) == {"ETH"}


def test_aliases_do_not_reach_other_code_systems() -> None:
    # An F11 under ICD-10-PCS's OID, or under an OID that merely starts like ICD-10-CM's, is
    # not an ICD-10-CM code; nor is a nicotine code under the OID a Part 2 code.
    for system, code in [
        ("urn:oid:2.16.840.1.113883.6.4", "F11.20"),
        ("urn:oid:2.16.840.1.113883.6.900", "F11.20"),
        (ICD_OID, "F17.210"),
    ]:
        assert labels_for(referral(system, code), contributor_kind="clinic", tables=TABLES) == []


def test_tables_written_with_an_alias_label_codes_written_with_the_uri() -> None:
    doc = {
        "sensitivity_system": ACTCODE,
        "confidentiality_system": CONF,
        "sensitivity": {
            "ETH": [{"system": "URN:OID:2.16.840.1.113883.6.90", "prefixes": ["F11"]}],
            "PSY": [{"system": "https://snomed.info/sct/", "codes": ["75516001"]}],
        },
    }
    tables = tables_from_dict(doc)
    sud = labels_for(referral(ICD, "F11.20"), contributor_kind="clinic", tables=tables)
    psychotherapy = labels_for(referral(SCT, "75516001"), contributor_kind="clinic", tables=tables)
    assert (codes(sud), codes(psychotherapy)) == ({"ETH"}, {"PSY"})


def test_the_stored_coding_keeps_the_system_its_writer_wrote() -> None:
    doc = referral(ICD_OID, "F11.20")
    labels_for(doc, contributor_kind="clinic", tables=TABLES)
    assert doc["reasonCode"][0]["coding"][0]["system"] == ICD_OID
