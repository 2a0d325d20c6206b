"""Deterministic, realistic and valid FHIR R4 test data for the benchmarks.

Survivor-serving networks: Patients with accented names and shelter identifiers, EpisodeOfCare
stays, CarePlans, referrals (ServiceRequest), referral Tasks and Consents, all referencing each
other by client-assigned ids (``Type/id``), the way an adapter ingests a partner's export.
"""

from __future__ import annotations

import random
import uuid
from datetime import date, timedelta
from typing import Any

GIVEN = (
    "María", "José", "Zoë", "Chloé", "Anaïs", "Łucja", "Søren", "François", "Ana-Lucía", "Inês",
    "Renée", "Ngọc", "Aísha", "Björn", "Dvořák", "Héloïse", "Joaquín", "Kübra", "Maëlle", "Nuño",
    "Ömer", "Paulína", "Raúl", "Siobhán", "Thảo", "Ülkü", "Yaël", "Žofie", "Amina", "Fatima",
)  # fmt: skip
FAMILY = (
    "Álvarez", "Núñez", "Müller", "O'Connor", "Nguyễn", "Đặng", "Çelik", "Øster", "Łukasiewicz",
    "García Márquez", "Jiménez", "Kovačević", "Lefèvre", "Mäkinen", "Novák", "Pérez", "Şahin",
    "Söderström", "Traoré", "Wójcik", "Zając", "Ibáñez", "Brontë", "Castaño",
    "Yılmaz",  # noqa: RUF001 (Turkish dotless i, on purpose)
)  # fmt: skip
ORGS = ("riverside-shelter", "harbor-clinic", "northside-legal-aid", "eastgate-hospital")
LANGS = ("es", "fr", "vi", "tr", "pl", "ar", "en", "pt")

OID = "urn:oid:2.16.840.1.113883.3.9999"
SCT = "http://snomed.info/sct"


def stable_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def patient(rng: random.Random, n: int, resource_id: str | None = None) -> dict[str, Any]:
    given = [rng.choice(GIVEN)] + ([rng.choice(GIVEN)] if rng.random() < 0.5 else [])
    born = date(1960, 1, 1) + timedelta(days=rng.randrange(0, 365 * 45))
    doc: dict[str, Any] = {
        "resourceType": "Patient",
        "active": True,
        "identifier": [
            {"system": f"{OID}.1", "value": f"RSH-{n:06d}"},
            {
                "use": "secondary",
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "MR",
                        }
                    ]
                },
                "system": "https://harbor-clinic.example/mrn",
                "value": f"HC{rng.randrange(10**7):07d}",
            },
        ],
        "name": [
            {"use": "official", "family": rng.choice(FAMILY), "given": given},
            {"use": "nickname", "given": [given[0][:3]]},
        ],
        "gender": rng.choice(("female", "female", "male", "other", "unknown")),
        "birthDate": born.isoformat(),
        "communication": [
            {
                "language": {"coding": [{"system": "urn:ietf:bcp:47", "code": rng.choice(LANGS)}]},
                "preferred": True,
            }
        ],
        "managingOrganization": {"reference": f"Organization/{rng.choice(ORGS)}"},
    }
    if resource_id is not None:
        doc["id"] = resource_id
    return doc


def care_plan(
    rng: random.Random, n: int, subject: str, resource_id: str | None = None
) -> dict[str, Any]:
    start = date(2025, 1, 1) + timedelta(days=rng.randrange(0, 600))
    doc: dict[str, Any] = {
        "resourceType": "CarePlan",
        "status": rng.choice(("active", "active", "draft", "completed")),
        "intent": "plan",
        "identifier": [{"system": f"{OID}.3", "value": f"CP-{n:06d}"}],
        "title": rng.choice(
            (
                "Safety and stabilisation plan",
                "Plan de seguridad y estabilización",
                "Housing and legal-aid coordination",
                "Trauma-informed counselling plan",
            )
        ),
        "category": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/"
                        "SDOHCC-CodeSystemTemporaryCodes",
                        "code": "sdoh-category-unspecified",
                    }
                ],
                "text": "Social care",
            }
        ],
        "subject": {"reference": subject},
        "period": {
            "start": start.isoformat(),
            "end": (start + timedelta(days=180)).isoformat(),
        },
        "author": {"reference": f"Organization/{rng.choice(ORGS)}"},
        "activity": [
            {
                "detail": {
                    "kind": "ServiceRequest",
                    "status": "in-progress",
                    "description": "Weekly check-in with the case worker (café on rue d'Été)",
                }
            }
        ],
    }
    if resource_id is not None:
        doc["id"] = resource_id
    return doc


def episode_of_care(rng: random.Random, n: int, subject: str, resource_id: str) -> dict[str, Any]:
    start = date(2025, 1, 1) + timedelta(days=rng.randrange(0, 600))
    return {
        "resourceType": "EpisodeOfCare",
        "id": resource_id,
        "status": "active",
        "identifier": [{"system": f"{OID}.2", "value": f"EOC-{n:06d}"}],
        "type": [{"text": "Emergency shelter stay"}],
        "patient": {"reference": subject},
        "managingOrganization": {"reference": "Organization/riverside-shelter"},
        "period": {"start": start.isoformat()},
    }


def service_request(
    rng: random.Random, n: int, subject: str, plan: str, resource_id: str
) -> dict[str, Any]:
    code, display = rng.choice(
        (("409063005", "Counseling"), ("183444007", "Referral for legal advice"))
    )
    return {
        "resourceType": "ServiceRequest",
        "id": resource_id,
        "status": "active",
        "intent": "order",
        "identifier": [{"system": f"{OID}.4", "value": f"REF-{n:06d}"}],
        "category": [
            {"coding": [{"system": SCT, "code": "308440001", "display": "Referral to service"}]}
        ],
        "code": {"coding": [{"system": SCT, "code": code, "display": display}]},
        "subject": {"reference": subject},
        "basedOn": [{"reference": plan}],
        "authoredOn": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T15:04:00Z",
        "requester": {"reference": "Organization/riverside-shelter"},
        "performer": [{"reference": f"Organization/{rng.choice(ORGS[1:])}"}],
        "note": [{"text": "Prefers a female interpreter; contact only via the shelter."}],
    }


def task(rng: random.Random, n: int, subject: str, focus: str, resource_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": resource_id,
        "status": rng.choice(("requested", "accepted", "in-progress", "completed")),
        "intent": "order",
        "identifier": [{"system": f"{OID}.5", "value": f"TASK-{n:06d}"}],
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]
        },
        "focus": {"reference": focus},
        "for": {"reference": subject},
        "authoredOn": "2026-11-20T15:04:00Z",
        "lastModified": "2026-11-21T09:30:00+01:00",
        "requester": {"reference": "Organization/riverside-shelter"},
        "owner": {"reference": f"Organization/{rng.choice(ORGS[1:])}"},
    }


def consent(rng: random.Random, n: int, subject: str, resource_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": resource_id,
        "status": "active",
        "identifier": [{"system": f"{OID}.6", "value": f"CONSENT-{n:06d}"}],
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://loinc.org",
                        "code": "64292-6",
                        "display": "Release of information consent",
                    }
                ]
            }
        ],
        "patient": {"reference": subject},
        "dateTime": "2026-11-20T14:30:00Z",
        "performer": [{"reference": subject}],
        "organization": [{"reference": "Organization/riverside-shelter"}],
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "provision": {
            "type": "permit",
            "period": {"start": "2026-11-20", "end": "2027-05-20"},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/"
                                "v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {"reference": f"Organization/{rng.choice(ORGS[1:])}"},
                }
            ],
            "action": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                            "code": "disclose",
                        }
                    ]
                }
            ],
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
        },
    }


def case_bundle(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """One survivor's record: 8 resources (Patient, EpisodeOfCare, CarePlan, 2 ServiceRequests,
    2 Tasks, Consent) referencing each other by id."""
    pid, eid, cid = stable_id(rng), stable_id(rng), stable_id(rng)
    subject, plan = f"Patient/{pid}", f"CarePlan/{cid}"
    out: list[dict[str, Any]] = [
        patient(rng, n, pid),
        episode_of_care(rng, n, subject, eid),
        care_plan(rng, n, subject, cid),
    ]
    for k in range(2):
        sid = stable_id(rng)
        out.append(service_request(rng, n * 10 + k, subject, plan, sid))
        out.append(task(rng, n * 10 + k, subject, f"ServiceRequest/{sid}", stable_id(rng)))
    out.append(consent(rng, n, subject, stable_id(rng)))
    return out


def mixed_resources(count: int, seed: int = 20261120) -> list[dict[str, Any]]:
    """``count`` resources made of whole survivor records (the last one may be cut short)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    n = 0
    while len(out) < count:
        out.extend(case_bundle(rng, n))
        n += 1
    return out[:count]
