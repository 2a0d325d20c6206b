"""Realistic FHIR resources for a survivor-care network (fictional people, real shapes)."""

from __future__ import annotations

from typing import Any

MRN = "urn:oid:2.16.840.1.113883.3.9999.1"  # the shelter's own record numbers
# The Continuum of Care's HMIS PersonalID: the network's person identifier (network.yaml).
HMIS = "urn:oid:2.16.840.1.113883.3.9999.100"
SNOMED = "http://snomed.info/sct"


def patient(
    family: str = "Álvarez",
    given: str = "María",
    *,
    mrn: str = "RSH-000412",
    birth_date: str = "1994-03-17",
    gender: str = "female",
    hmis: str | None = None,
) -> dict[str, Any]:
    identifiers = [{"system": MRN, "value": mrn}]
    if hmis:
        identifiers.append({"system": HMIS, "value": hmis})
    return {
        "resourceType": "Patient",
        "identifier": identifiers,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth_date,
    }


def care_plan(
    patient_id: str, *, status: str = "active", title: str = "Safety plan"
) -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "status": status,
        "intent": "plan",
        "title": title,
        "category": [{"coding": [{"system": SNOMED, "code": "734163000", "display": "Care plan"}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": "2026-10-03", "end": "2027-04-03"},
    }


def referral(
    patient_id: str, *, performer: str = "Organization/harbor-clinic", code: str = "409063005"
) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": SNOMED, "code": "308440001"}]}],
        "code": {"coding": [{"system": SNOMED, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": "2026-11-20T15:04:00Z",
        "requester": {"reference": "Organization/riverside-shelter"},
        "performer": [{"reference": performer}],
    }


def task(
    referral_id: str, patient_id: str, *, owner: str = "Organization/harbor-clinic"
) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "focus": {"reference": f"ServiceRequest/{referral_id}"},
        "for": {"reference": f"Patient/{patient_id}"},
        "authoredOn": "2026-11-20T15:04:00Z",
        "owner": {"reference": owner},
    }


def organization(org_id: str, name: str) -> dict[str, Any]:
    return {"resourceType": "Organization", "id": org_id, "active": True, "name": name}
