"""The compliance office reads the audit log (``GET /fhir/AuditEvent``) and gives a survivor her
accounting of disclosures (``$accounting-of-disclosures``); nobody else may, and every such
read is itself audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.clock import FrozenClock
from gateway.settings import Settings
from gateway.store.sql import SqlStore
from tests.support.network import partner_client, post, release_consent
from tests.support.records import organization
from tests.support.valid import valid

REVIEW_SCOPES = ("system/AuditEvent.rs", "system/Organization.rs", "system/Patient.rs")


@pytest.fixture
def compliance(settings: Settings, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    with partner_client(
        settings, sql_store, clock, "compliance-office", "compliance", REVIEW_SCOPES, ("HCOMPL",)
    ) as client:
        yield client


@pytest.fixture
def released_and_read(
    sql_store: SqlStore,
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
) -> dict[str, str]:
    """The survivor's plan released to the clinic, read by it twice, and by the shelter."""
    directory_entry = valid(organization("harbor-clinic", "Harbor Community Clinic"))
    sql_store.update("Organization", "harbor-clinic", directory_entry, if_match=None)
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"]))
    for _ in range(2):
        assert clinic.get(f"/fhir/CarePlan/{shelter_record['plan']}").status_code == 200
    shelter.get(f"/fhir/CarePlan/{shelter_record['plan']}")
    return shelter_record


def resources(bundle: dict[str, Any], rtype: str = "AuditEvent") -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == rtype
    ]


def test_compliance_finds_who_read_a_survivors_data(
    compliance: TestClient, released_and_read: dict[str, str]
) -> None:
    patient = f"Patient/{released_and_read['patient']}"
    found = compliance.get(f"/fhir/AuditEvent?patient={patient}&agent=Organization/harbor-clinic")
    assert found.status_code == 200
    events = resources(found.json())
    assert found.json()["total"] == len(events) == 2
    assert all(e["outcome"] == "0" for e in events)
    assert all(e["id"].isdigit() for e in events)
    assert int(events[0]["id"]) > int(events[1]["id"])  # newest first


def test_the_audit_log_pages_newest_first_without_repeats(
    compliance: TestClient, released_and_read: dict[str, str]
) -> None:
    url: str | None = f"/fhir/AuditEvent?patient={released_and_read['patient']}&_count=2"
    seen: list[str] = []
    total = None
    while url:
        page = compliance.get(url).json()
        total = total or page["total"]
        seen += [e["id"] for e in resources(page)]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == len(set(seen)) == total
    assert [int(s) for s in seen] == sorted((int(s) for s in seen), reverse=True)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("outcome=4", 0),
        ("subtype=read&agent=Organization/riverside-shelter", 1),
        ("date=ge2026-01-01&date=le2030-01-01&agent=Organization/harbor-clinic", 2),
        ("date=lt2026-01-01", 0),
    ],
)
def test_the_audit_log_answers_each_search_parameter(
    compliance: TestClient, released_and_read: dict[str, str], query: str, expected: int
) -> None:
    patient = f"patient=Patient/{released_and_read['patient']}"
    found = compliance.get(f"/fhir/AuditEvent?{patient}&{query}").json()
    assert found["total"] == expected


def test_an_entity_search_finds_every_read_of_one_record(
    compliance: TestClient, released_and_read: dict[str, str]
) -> None:
    found = compliance.get(f"/fhir/AuditEvent?entity=CarePlan/{released_and_read['plan']}")
    assert found.json()["total"] == 4  # the shelter's create, the clinic twice, the shelter once


def test_a_refused_read_is_found_by_outcome(
    settings: Settings,
    sql_store: SqlStore,
    clock: FrozenClock,
    compliance: TestClient,
    shelter_record: dict[str, str],
) -> None:
    with partner_client(
        settings, sql_store, clock, "northside-legal-aid", "legal-aid", purposes=("HLEGAL",)
    ) as legal_aid:
        assert legal_aid.get(f"/fhir/CarePlan/{shelter_record['plan']}").status_code == 404
    plan = f"CarePlan/{shelter_record['plan']}"
    found = compliance.get(f"/fhir/AuditEvent?entity={plan}&outcome=4").json()
    (event,) = resources(found)
    assert event["outcomeDesc"] == "no-permit"


def test_only_the_compliance_office_reads_the_audit_log_and_trying_is_audited(
    clinic: TestClient, compliance: TestClient, shelter_record: dict[str, str]
) -> None:
    assert clinic.get("/fhir/AuditEvent").status_code == 403
    acct = clinic.get(f"/fhir/Patient/{shelter_record['patient']}/$accounting-of-disclosures")
    assert acct.status_code == 403
    tries = compliance.get(
        "/fhir/AuditEvent?agent=Organization/harbor-clinic&subtype=refused:not-a-reviewer"
    ).json()
    assert tries["total"] == 2


def test_reading_a_survivors_trail_is_itself_on_her_trail(
    compliance: TestClient, released_and_read: dict[str, str]
) -> None:
    patient = f"Patient/{released_and_read['patient']}"
    compliance.get(f"/fhir/AuditEvent?patient={patient}")
    reviews = compliance.get(
        f"/fhir/AuditEvent?patient={patient}&agent=Organization/compliance-office"
    ).json()
    assert reviews["total"] >= 1
    assert "search-type" in {c["code"] for c in resources(reviews)[-1]["subtype"]}


def test_unknown_audit_search_parameters_are_refused(compliance: TestClient) -> None:
    response = compliance.get("/fhir/AuditEvent?name=alvarez")
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["name"]


def test_the_accounting_lists_each_disclosure_to_another_partner_with_who_when_what_why(
    compliance: TestClient, released_and_read: dict[str, str]
) -> None:
    response = compliance.get(
        f"/fhir/Patient/{released_and_read['patient']}/$accounting-of-disclosures"
    )
    assert response.status_code == 200
    bundle = response.json()
    assert bundle["type"] == "collection"
    disclosures = resources(bundle)
    assert len(disclosures) == 2  # the clinic's two reads; the shelter's own read is not one
    for d in disclosures:
        (agent,) = d["agent"]
        assert agent["who"]["reference"] == "Organization/harbor-clinic"
        assert agent["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"
        assert f"CarePlan/{released_and_read['plan']}" in [
            e["what"]["reference"] for e in d["entity"]
        ]
        assert d["recorded"]
        assert "altId" not in agent  # the accounting is for the survivor: no client ids
    (recipient,) = resources(bundle, "Organization")
    assert recipient["name"] == "Harbor Community Clinic"
    assert disclosures[0]["recorded"] <= disclosures[1]["recorded"]  # oldest first


def test_the_accounting_is_bounded_by_since_and_until_and_is_audited(
    compliance: TestClient, released_and_read: dict[str, str]
) -> None:
    url = f"/fhir/Patient/{released_and_read['patient']}/$accounting-of-disclosures"
    assert resources(compliance.get(f"{url}?_since=2030-01-01").json()) == []
    assert len(resources(compliance.get(f"{url}?_until=2030-01-01").json())) == 2
    given = compliance.get(
        f"/fhir/AuditEvent?patient={released_and_read['patient']}&subtype=accounting-of-disclosures"
    ).json()
    assert given["total"] == 2
