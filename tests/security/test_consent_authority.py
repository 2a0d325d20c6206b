"""Consent authority, attacked as a hostile partner would: it holds valid keys and Consent
write scope, and writes Consents for a survivor another partner serves. A Consent is its
recorder's release of its own records: for a Patient the recorder contributed, governing only
that recorder's records, permit and deny alike."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.clock import FrozenClock
from gateway.settings import Settings
from gateway.store.sql import SqlStore
from tests.support.network import FHIR, partner_client, post, release_consent
from tests.support.records import patient, referral
from tests.support.valid import valid

ABSENT = "00000000-0000-4000-8000-000000000000"


def rogue_release(patient_ref: dict[str, Any], recipient: str) -> dict[str, Any]:
    consent = release_consent("placeholder", recipient=recipient)
    consent["patient"] = patient_ref
    return consent


def refusal(response: Any) -> tuple[int, Any]:
    return response.status_code, response.json()


def test_a_partner_cannot_record_a_consent_for_a_survivor_it_does_not_hold(
    hospital: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    target = {"reference": f"Patient/{shelter_record['patient']}"}
    stolen = post(
        hospital, "/fhir/Consent", rogue_release(target, "Organization/st-marys-hospital")
    )
    assert stolen.status_code == 404
    assert stolen.json()["issue"][0]["expression"] == ["Consent.patient"]
    # Nothing was recorded, and nothing of hers is visible to the hospital.
    assert hospital.get(f"/fhir/ServiceRequest/{shelter_record['referral']}").status_code == 404
    assert hospital.get("/fhir/Consent?_summary=count").json()["total"] == 0


@pytest.mark.parametrize(
    "patient_ref",
    [
        {"reference": f"Patient/{ABSENT}"},  # an id that never existed
        {"identifier": {"system": "urn:oid:2.16.840.1.113883.3.9999.100", "value": "CoC-1"}},
        {"reference": "https://elsewhere.example/fhir/Patient/p1"},  # another server's
        {"reference": "Patient/p1/_history/1"},  # a version, not the survivor
    ],
    ids=["absent", "identifier-only", "foreign-url", "versioned"],
)
def test_every_other_patient_reference_is_refused_exactly_like_another_partners_patient(
    hospital: TestClient, shelter_record: dict[str, str], patient_ref: dict[str, Any]
) -> None:
    held_by_shelter = {"reference": f"Patient/{shelter_record['patient']}"}
    org = "Organization/st-marys-hospital"
    hidden = post(hospital, "/fhir/Consent", rogue_release(held_by_shelter, org))
    other = post(hospital, "/fhir/Consent", rogue_release(patient_ref, org))
    assert refusal(hidden) == refusal(other)
    assert {k for k in hidden.headers if k != "x-request-id"} == {
        k for k in other.headers if k != "x-request-id"
    }


def test_a_rogue_deny_cannot_block_another_partners_release(
    shelter: TestClient, clinic: TestClient, legal_aid: TestClient, shelter_record: dict[str, str]
) -> None:
    assert (
        post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"])).status_code
        == 201
    )
    url = f"/fhir/ServiceRequest/{shelter_record['referral']}"
    assert clinic.get(url).status_code == 200
    deny = release_consent(shelter_record["patient"])
    deny["provision"] = {"type": "deny"}
    # legal aid's own survivor record cannot be used to reach the shelter's either
    assert post(legal_aid, "/fhir/Consent", deny).status_code == 404
    assert clinic.get(url).status_code == 200


def test_a_legacy_rogue_consent_governs_nothing_of_the_contributors(
    sql_store: SqlStore, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    """Even a Consent that reached the database around the write rule (written before it
    existed) releases and blocks nothing of another partner's records."""
    stolen = release_consent(shelter_record["patient"])
    sql_store.create(valid(stolen, "harbor-clinic"))
    assert clinic.get(f"/fhir/ServiceRequest/{shelter_record['referral']}").status_code == 404
    found = clinic.get(f"/fhir/ServiceRequest?patient={shelter_record['patient']}").json()
    assert found["total"] == 0


def test_the_shelter_still_governs_and_revokes_its_own_release(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    release = post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"])).json()
    url = f"/fhir/CarePlan/{shelter_record['plan']}"
    assert clinic.get(url).status_code == 200
    revoked = {**release, "status": "inactive"}
    consent_url = f"/fhir/Consent/{release['id']}"
    assert shelter.put(consent_url, content=orjson.dumps(revoked), headers=FHIR).status_code == 200
    assert clinic.get(url).status_code == 404


def test_a_consent_cannot_be_moved_onto_another_partners_survivor(
    shelter: TestClient, hospital: TestClient, shelter_record: dict[str, str]
) -> None:
    own = post(hospital, "/fhir/Patient", patient("Okafor", "Amina", mrn="SMH-1")).json()
    consent = release_consent(own["id"], recipient="Organization/harbor-clinic")
    recorded = post(hospital, "/fhir/Consent", consent).json()
    moved = {**recorded, "patient": {"reference": f"Patient/{shelter_record['patient']}"}}
    answer = hospital.put(
        f"/fhir/Consent/{recorded['id']}", content=orjson.dumps(moved), headers=FHIR
    )
    assert answer.status_code == 404
    assert hospital.get(f"/fhir/Consent/{recorded['id']}").json()["patient"] == consent["patient"]


def test_a_hospital_releases_its_own_referral_by_recording_a_consent_for_its_own_patient(
    hospital: TestClient, clinic: TestClient
) -> None:
    own = post(hospital, "/fhir/Patient", patient("Okafor", "Amina", mrn="SMH-2")).json()
    sent = post(hospital, "/fhir/ServiceRequest", referral(own["id"])).json()
    assert clinic.get(f"/fhir/ServiceRequest/{sent['id']}").status_code == 404
    consent = release_consent(own["id"], recipient="Organization/harbor-clinic")
    assert post(hospital, "/fhir/Consent", consent).status_code == 201
    assert clinic.get(f"/fhir/ServiceRequest/{sent['id']}").status_code == 200


def test_a_consent_in_the_transaction_that_creates_its_patient_is_accepted(
    hospital: TestClient, clinic: TestClient
) -> None:
    consent = release_consent("placeholder", recipient="Organization/harbor-clinic")
    consent["patient"] = {"reference": "urn:uuid:5d2f6a3e-0d1c-4a39-9e8b-1f3b6c2d7e10"}
    sr = referral("placeholder")
    sr["subject"] = {"reference": "urn:uuid:5d2f6a3e-0d1c-4a39-9e8b-1f3b6c2d7e10"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": consent, "request": {"method": "POST", "url": "Consent"}},
            {"fullUrl": "urn:uuid:5d2f6a3e-0d1c-4a39-9e8b-1f3b6c2d7e10",
             "resource": patient("Okafor", "Amina", mrn="SMH-3"),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": sr, "request": {"method": "POST", "url": "ServiceRequest"}},
        ],
    }  # fmt: skip
    answer = post(hospital, "/fhir", bundle)
    assert answer.status_code == 200, answer.text
    referral_id = answer.json()["entry"][2]["resource"]["id"]
    assert clinic.get(f"/fhir/ServiceRequest/{referral_id}").status_code == 200


def test_a_kind_the_policy_does_not_name_may_not_record_consents(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock
) -> None:
    with partner_client(settings, sql_store, clock, "compliance-office", "compliance") as office:
        answer = post(office, "/fhir/Consent", release_consent(ABSENT))
    assert answer.status_code == 403
