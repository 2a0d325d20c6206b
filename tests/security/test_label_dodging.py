"""Labels that cannot be dodged. A substance-use code (42 CFR Part 2) is labelled ETH at write
time and released only under a Consent provision that lists ETH, however its writer spells the
code system: ICD-10-CM's OID, ``https``, a trailing slash, an upper-case host. Before code
systems were compared by canonical URI, a referral coded ``urn:oid:2.16.840.1.113883.6.90|
F11.20`` got no ETH label and a plain release disclosed it. Each test is one story on the demo
network, over REST (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.network import post, release_consent
from tests.support.records import referral

ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10CM_OID = "urn:oid:2.16.840.1.113883.6.90"
OPIOID_DEPENDENCE = "F11.20"

ALIASES = [
    pytest.param(ICD10CM_OID, id="oid"),
    pytest.param("URN:OID:2.16.840.1.113883.6.90", id="upper-case-urn-oid"),
    pytest.param("https://hl7.org/fhir/sid/icd-10-cm", id="https"),
    pytest.param("http://hl7.org/fhir/sid/icd-10-cm/", id="trailing-slash"),
    pytest.param("http://HL7.ORG/fhir/sid/icd-10-cm", id="upper-case-host"),
]


def sud_referral(patient_id: str, system: str) -> dict[str, Any]:
    """The shelter's referral of the survivor for opioid dependence, coded under ``system``."""
    doc = referral(patient_id)
    doc["code"] = {
        "coding": [{"system": system, "code": OPIOID_DEPENDENCE, "display": "Opioid dependence"}]
    }
    return doc


def write_sud_referral(shelter: TestClient, patient_id: str, system: str) -> str:
    response = post(shelter, "/fhir/ServiceRequest", sud_referral(patient_id, system))
    assert response.status_code == 201
    stored = response.json()
    security = {(c.get("system"), c.get("code")) for c in stored["meta"]["security"]}
    assert (ACTCODE, "ETH") in security
    assert stored["code"]["coding"][0]["system"] == system  # kept as the shelter wrote it
    sud_id: str = stored["id"]
    return sud_id


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def by_code(client: TestClient, system: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(
        "/fhir/ServiceRequest", params={"code": f"{system}|{OPIOID_DEPENDENCE}"}
    ).json()
    return found


@pytest.mark.parametrize("system", ALIASES)
def test_a_plain_release_does_not_disclose_a_substance_use_referral_coded_with_an_alias(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str], system: str
) -> None:
    survivor = shelter_record["patient"]
    sud = write_sud_referral(shelter, survivor, system)
    assert post(shelter, "/fhir/Consent", release_consent(survivor)).status_code == 201

    # The release works: the plan and the plain referral reach the clinic ...
    assert clinic.get(f"/fhir/CarePlan/{shelter_record['plan']}").status_code == 200
    assert clinic.get(f"/fhir/ServiceRequest/{shelter_record['referral']}").status_code == 200
    # ... the substance-use referral does not: not by id, nor by any search.
    assert clinic.get(f"/fhir/ServiceRequest/{sud}").status_code == 404
    mine = clinic.get("/fhir/ServiceRequest", params={"patient": f"Patient/{survivor}"}).json()
    assert (mine["total"], ids(mine)) == (1, [shelter_record["referral"]])
    for spelling in (system, ICD10CM, ICD10CM_OID):
        found = by_code(clinic, spelling)
        assert (found["total"], ids(found)) == (0, [])
    bare = clinic.get("/fhir/ServiceRequest", params={"code": OPIOID_DEPENDENCE}).json()
    assert bare["total"] == 0
    assert clinic.get("/fhir/ServiceRequest", params={"_id": sud}).json()["total"] == 0
    probe = clinic.get("/fhir/ServiceRequest", params={"_security": f"{ACTCODE}|ETH"}).json()
    assert probe["total"] == 0


@pytest.mark.parametrize("system", ALIASES)
def test_a_release_that_lists_eth_discloses_it_and_any_spelling_finds_it(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str], system: str
) -> None:
    survivor = shelter_record["patient"]
    sud = write_sud_referral(shelter, survivor, system)
    release = release_consent(survivor)
    release["provision"]["securityLabel"] = [{"system": ACTCODE, "code": "ETH"}]
    assert post(shelter, "/fhir/Consent", release).status_code == 201

    read = clinic.get(f"/fhir/ServiceRequest/{sud}")
    assert read.status_code == 200
    assert read.json()["code"]["coding"][0]["system"] == system
    for spelling in (system, ICD10CM, ICD10CM_OID, "https://hl7.org/fhir/sid/icd-10-cm/"):
        found = by_code(clinic, spelling)
        assert (found["total"], ids(found)) == (1, [sud]), spelling


@pytest.mark.parametrize(
    ("written", "denied"),
    [
        pytest.param(ICD10CM_OID, ICD10CM, id="record-oid-deny-uri"),
        pytest.param(ICD10CM, ICD10CM_OID, id="record-uri-deny-oid"),
        pytest.param("https://hl7.org/fhir/sid/icd-10-cm", "URN:OID:2.16.840.1.113883.6.90",
                     id="record-https-deny-upper-oid"),
    ],
)  # fmt: skip
def test_a_deny_of_the_code_holds_whichever_spelling_each_side_used(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    written: str,
    denied: str,
) -> None:
    survivor = shelter_record["patient"]
    sud = write_sud_referral(shelter, survivor, written)
    release = release_consent(survivor)
    release["provision"]["securityLabel"] = [{"system": ACTCODE, "code": "ETH"}]
    release["provision"]["provision"] = [
        {"type": "deny", "code": [{"coding": [{"system": denied, "code": OPIOID_DEPENDENCE}]}]}
    ]
    assert post(shelter, "/fhir/Consent", release).status_code == 201

    assert clinic.get(f"/fhir/ServiceRequest/{sud}").status_code == 404
    for spelling in (written, denied):
        assert by_code(clinic, spelling)["total"] == 0
