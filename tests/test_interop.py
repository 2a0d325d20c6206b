"""Interoperability: the real gateway (granian on loopback) driven by an independent FHIR client,
fhirpy, as a partner system would drive it. Raw httpx is used only where fhirpy hides what FHIR
says on the wire (status codes, headers, conditional requests).

Runs against embedded SQLite and, when ``GATEWAY_TEST_POSTGRES_URL`` is set, PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

from gateway.keys import init_keys
from tests.support.databases import create_database, drop_database
from tests.support.servers import running_gateway

pytestmark = pytest.mark.server

PATIENT_ID_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"
HARBOR_CLINIC = "Organization/harbor-clinic"
POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL")


# -- the server ------------------------------------------------------------------------------


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(not POSTGRES_URL, reason="GATEWAY_TEST_POSTGRES_URL is not set"),
            ],
        ),
    ],
)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The base URL of a real gateway over an empty database (it creates the schema itself).

    Everything the server owns is private to this run and this xdist worker: the port (reserved
    across processes), a work directory under the worker's own basetemp holding the SQLite file,
    the keys, the audit checkpoint file, TMPDIR and the server's log, and, for PostgreSQL, a
    database named after the run and the worker."""
    work = tmp_path_factory.mktemp(f"interop-{request.param}")
    keys_dir = work / "keys"
    init_keys(keys_dir, datetime.now(UTC))
    if request.param == "postgres":
        assert POSTGRES_URL is not None
        database_url = create_database(POSTGRES_URL, "gateway_interop")
    else:
        database_url = f"sqlite:///{work}/interop.db"
    env = {"GATEWAY_DATABASE_URL": database_url, "GATEWAY_KEYS_DIR": str(keys_dir)}
    try:
        with running_gateway(env, work) as server:
            yield server.base
    finally:
        if request.param == "postgres" and POSTGRES_URL:
            drop_database(POSTGRES_URL, "gateway_interop")


@pytest.fixture(scope="module")
def client(gateway: str) -> SyncFHIRClient:
    return SyncFHIRClient(f"{gateway}/fhir", requests_config={"timeout": 15})


@pytest.fixture(scope="module")
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{gateway}/fhir", headers={"Accept": "application/fhir+json"}, timeout=15
    ) as raw:
        yield raw


# -- realistic survivor-care data ---------------------------------------------------------------


def medical_record_number() -> str:
    """A fresh value in the network's patient identifier system, so tests never see each other."""
    return f"SVR-{uuid.uuid4().hex[:10].upper()}"


def patient_data(
    mrn: str,
    *,
    given: tuple[str, ...] = ("María", "José"),
    family: str = "Álvarez",
    birth_date: str = "1992-03-14",
) -> dict[str, Any]:
    return {
        "meta": {
            "security": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                    "code": "R",
                    "display": "restricted",
                }
            ]
        },
        "identifier": [{"use": "usual", "system": PATIENT_ID_SYSTEM, "value": mrn}],
        "active": True,
        "name": [
            {
                "use": "official",
                "text": " ".join((*given, family)),
                "family": family,
                "given": list(given),
            }
        ],
        "gender": "female",
        "birthDate": birth_date,
        "communication": [
            {
                "language": {
                    "coding": [{"system": "urn:ietf:bcp:47", "code": "es", "display": "Spanish"}]
                },
                "preferred": True,
            }
        ],
    }


def care_plan_data(patient_id: str, title: str) -> dict[str, Any]:
    return {
        "status": "active",
        "intent": "plan",
        "title": title,
        "description": "Survivor-led plan agreed with the shelter case manager.",
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": "2026-11-01"},
        "category": [
            {
                "coding": [
                    {
                        "system": "http://snomed.info/sct",
                        "code": "734163000",
                        "display": "Care plan",
                    }
                ]
            }
        ],
    }


CARE_PLAN_TITLES = (
    "Emergency shelter and safety planning",
    "Trauma-informed primary care",
    "Legal advocacy: protective order",
    "Immigration relief (T visa) application",
    "Counselling with a Spanish-speaking therapist",
    "Transitional housing",
    "Employment and job-skills training",
)


def _save_patient(client: SyncFHIRClient, mrn: str, **kwargs: Any) -> Any:
    patient = client.resource("Patient", **patient_data(mrn, **kwargs))
    patient.save()
    return patient


def _assert_outcome(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"]
    assert all(issue["severity"] in ("fatal", "error") for issue in body["issue"])
    return body


# -- create and read -----------------------------------------------------------------------------


def test_client_creates_patient_and_reads_it_back(client: SyncFHIRClient) -> None:
    mrn = medical_record_number()
    patient = _save_patient(client, mrn)

    assert patient.id
    assert patient["meta"]["versionId"] == "1"
    assert patient["meta"]["lastUpdated"]
    assert patient["name"][0]["text"] == "María José Álvarez"

    by_reference = client.reference("Patient", patient.id).to_resource()
    assert by_reference.serialize() == patient.serialize()  # type: ignore[no-untyped-call]

    by_search = client.resources("Patient").search(_id=patient.id).fetch()
    assert [p.serialize() for p in by_search] == [patient.serialize()]  # type: ignore[no-untyped-call]
    assert by_search[0]["name"][0]["family"] == "Álvarez"
    assert by_search[0]["identifier"][0] == {
        "use": "usual",
        "system": PATIENT_ID_SYSTEM,
        "value": mrn,
    }


# -- search --------------------------------------------------------------------------------------


def test_client_finds_patient_by_name_without_accents_or_case(client: SyncFHIRClient) -> None:
    patient = _save_patient(client, medical_record_number())

    for term in ("maria", "MARIA", "alvarez", "José", "jose"):
        found = client.resources("Patient").search(name=term).fetch_all()
        assert patient.id in {p.id for p in found}, term

    accented = client.resources("Patient").search(family="ÁLVAREZ", _id=patient.id).fetch()
    assert [p.id for p in accented] == [patient.id]


def test_client_finds_patient_by_identifier_system_and_value(client: SyncFHIRClient) -> None:
    mrn = medical_record_number()
    patient = _save_patient(client, mrn)
    _save_patient(client, medical_record_number(), given=("Lucía",), family="Fernández")

    found = client.resources("Patient").search(identifier=f"{PATIENT_ID_SYSTEM}|{mrn}").fetch()
    assert [p.id for p in found] == [patient.id]

    other_system = client.resources("Patient").search(identifier=f"urn:oid:1.2.3|{mrn}").fetch()
    assert other_system == []


def test_client_filters_patients_by_birthdate_with_prefix(client: SyncFHIRClient) -> None:
    older = _save_patient(client, medical_record_number(), birth_date="1985-07-02")
    younger = _save_patient(
        client, medical_record_number(), given=("Ana", "Lucía"), birth_date="1990-01-01"
    )
    both = f"{older.id},{younger.id}"

    since_1990 = client.resources("Patient").search(_id=both, birthdate__ge="1990-01-01").fetch()
    assert [p.id for p in since_1990] == [younger.id]

    before_1990 = client.resources("Patient").search(_id=both, birthdate__lt="1990-01-01").fetch()
    assert [p.id for p in before_1990] == [older.id]


def test_client_follows_next_links_through_every_page(
    client: SyncFHIRClient, http: httpx.Client
) -> None:
    patient = _save_patient(client, medical_record_number())
    created = set()
    for title in CARE_PLAN_TITLES:
        plan = client.resource("CarePlan", **care_plan_data(patient.id, title))
        plan.save()
        created.add(plan.id)
    assert len(created) == 7

    first_page = http.get("/CarePlan", params={"patient": patient.id, "_count": "3"}).json()
    assert len(first_page["entry"]) == 3
    assert first_page["total"] == 7
    assert any(link["relation"] == "next" for link in first_page["link"])

    plans = client.resources("CarePlan").search(patient=patient.id).limit(3).fetch_all()
    ids = [p.id for p in plans]
    assert len(ids) == 7, "every page followed"
    assert len(set(ids)) == 7, "no resource twice"
    assert set(ids) == created
    assert {p["title"] for p in plans} == set(CARE_PLAN_TITLES)


def test_client_includes_the_subject_of_care_plans(client: SyncFHIRClient) -> None:
    patient = _save_patient(client, medical_record_number())
    plan = client.resource("CarePlan", **care_plan_data(patient.id, CARE_PLAN_TITLES[0]))
    plan.save()

    bundle = (
        client.resources("CarePlan")
        .search(patient=patient.id)
        .include("CarePlan", "subject")
        .fetch_raw()
    )
    modes = {
        (e["resource"]["resourceType"], e["resource"]["id"]): e["search"]["mode"]
        for e in bundle["entry"]
    }
    assert modes == {("CarePlan", plan.id): "match", ("Patient", patient.id): "include"}

    # fhirpy's plain fetch keeps only the searched type
    assert [p.id for p in client.resources("CarePlan").search(patient=patient.id).fetch()] == [
        plan.id
    ]


# -- update, history, optimistic locking ---------------------------------------------------------


def test_client_updates_patient_and_history_keeps_both_versions(
    client: SyncFHIRClient, http: httpx.Client
) -> None:
    patient = _save_patient(client, medical_record_number())
    patient_id = patient.id

    patient["telecom"] = [{"system": "phone", "value": "+1-555-0142", "use": "mobile"}]
    patient.save()

    assert patient.id == patient_id
    assert patient["meta"]["versionId"] == "2"
    reread = client.reference("Patient", patient_id).to_resource()
    assert reread["telecom"][0]["value"] == "+1-555-0142"
    assert reread["meta"]["versionId"] == "2"

    history = http.get(f"/Patient/{patient_id}/_history")
    assert history.status_code == 200
    bundle = history.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    versions = [e["resource"]["meta"]["versionId"] for e in bundle["entry"]]
    assert versions == ["2", "1"]
    assert "telecom" not in bundle["entry"][1]["resource"]
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "POST"]

    first = http.get(f"/Patient/{patient_id}/_history/1")
    assert first.status_code == 200
    assert first.json()["name"][0]["text"] == "María José Álvarez"


def test_stale_if_match_is_refused_with_412_and_an_outcome(
    client: SyncFHIRClient, http: httpx.Client
) -> None:
    patient = _save_patient(client, medical_record_number())
    patient["gender"] = "other"
    patient.save()  # now at version 2

    stale = {**patient.serialize(), "gender": "female"}
    response = http.put(
        f"/Patient/{patient.id}",
        json=stale,
        headers={"If-Match": 'W/"1"', "Content-Type": "application/fhir+json"},
    )
    _assert_outcome(response, 412)

    unchanged = client.reference("Patient", patient.id).to_resource()
    assert unchanged["gender"] == "other"
    assert unchanged["meta"]["versionId"] == "2"

    current = http.put(
        f"/Patient/{patient.id}",
        json=stale,
        headers={"If-Match": 'W/"2"', "Content-Type": "application/fhir+json"},
    )
    assert current.status_code == 200
    assert current.headers["etag"] == 'W/"3"'


# -- delete --------------------------------------------------------------------------------------


def test_deleted_patient_is_gone_for_client_and_on_the_wire(
    client: SyncFHIRClient, http: httpx.Client
) -> None:
    patient = _save_patient(client, medical_record_number())
    patient_id = patient.id

    patient.delete()

    with pytest.raises(ResourceNotFound):
        client.reference("Patient", patient_id).to_resource()
    assert client.resources("Patient").search(_id=patient_id).fetch() == []

    _assert_outcome(http.get(f"/Patient/{patient_id}"), 410)
    _assert_outcome(http.get(f"/Patient/{uuid.uuid4()}"), 404)


# -- transaction -------------------------------------------------------------------------------


def test_transaction_creates_referral_and_task_the_client_can_follow(
    client: SyncFHIRClient,
) -> None:
    patient_urn, referral_urn, task_urn = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    mrn = medical_record_number()
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": task_urn,
                "resource": {
                    "resourceType": "Task",
                    "status": "requested",
                    "intent": "order",
                    "priority": "urgent",
                    "description": "Schedule a trauma-informed intake at Harbor Clinic",
                    "focus": {"reference": referral_urn},
                    "for": {"reference": patient_urn},
                    "owner": {"reference": HARBOR_CLINIC, "display": "Harbor Clinic"},
                    "authoredOn": "2026-11-23T09:30:00Z",
                },
                "request": {"method": "POST", "url": "Task"},
            },
            {
                "fullUrl": referral_urn,
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "priority": "urgent",
                    "code": {"text": "Trauma-informed primary care intake"},
                    "subject": {"reference": patient_urn},
                    "performer": [{"reference": HARBOR_CLINIC, "display": "Harbor Clinic"}],
                    "authoredOn": "2026-11-23T09:30:00Z",
                    "note": [{"text": "Prefers a female clinician and a Spanish interpreter."}],
                },
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
            {
                "fullUrl": patient_urn,
                "resource": {"resourceType": "Patient", **patient_data(mrn)},
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }

    # fhirpy posts to ".../fhir/"; the server redirects (307) to "/fhir" and requests re-posts
    response = client.execute("", method="post", data=transaction)

    assert response["resourceType"] == "Bundle"
    assert response["type"] == "transaction-response"
    entries = response["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["201", "201", "201"]
    task_id, referral_id, patient_id = (e["resource"]["id"] for e in entries)
    assert entries[0]["response"]["location"].endswith(f"/Task/{task_id}/_history/1")

    task = client.reference("Task", task_id).to_resource()
    assert task["owner"].reference == HARBOR_CLINIC
    assert task["for"].reference == f"Patient/{patient_id}"

    referral = task["focus"].to_resource()
    assert referral.resource_type == "ServiceRequest"
    assert referral.id == referral_id
    assert referral["subject"].reference == f"Patient/{patient_id}"
    assert referral["performer"][0].reference == HARBOR_CLINIC
    assert referral["subject"].to_resource()["identifier"][0]["value"] == mrn

    owned = client.resources("Task").search(owner=HARBOR_CLINIC, focus=referral.reference).fetch()
    assert [t.id for t in owned] == [task_id]


# -- conditional create ------------------------------------------------------------------------


def test_conditional_create_twice_yields_one_patient(
    client: SyncFHIRClient, http: httpx.Client
) -> None:
    mrn = medical_record_number()
    body = {"resourceType": "Patient", **patient_data(mrn)}
    headers = {
        "If-None-Exist": f"identifier={PATIENT_ID_SYSTEM}|{mrn}",
        "Content-Type": "application/fhir+json",
    }

    first = http.post("/Patient", json=body, headers=headers)
    assert first.status_code == 201, first.text
    second = http.post("/Patient", json=body, headers=headers)
    assert second.status_code == 200, second.text

    assert second.json()["id"] == first.json()["id"]
    assert second.json()["meta"]["versionId"] == "1"
    found = client.resources("Patient").search(identifier=f"{PATIENT_ID_SYSTEM}|{mrn}")
    assert found.search(_summary="count").fetch_raw()["total"] == 1
    assert [p.id for p in found.fetch()] == [first.json()["id"]]


# -- capabilities ------------------------------------------------------------------------------


def test_capability_statement_lists_patient_read_and_search(client: SyncFHIRClient) -> None:
    statement = client.execute("metadata", method="get")

    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    (rest,) = statement["rest"]
    assert rest["mode"] == "server"
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient["interaction"]}
    assert {"read", "search-type", "create", "update", "delete"} <= codes
    params = {p["name"]: p["type"] for p in patient["searchParam"]}
    assert params["name"] == "string"
    assert params["identifier"] == "token"
    assert params["birthdate"] == "date"
    assert {"transaction", "batch"} <= {i["code"] for i in rest["interaction"]}
