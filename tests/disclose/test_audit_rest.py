"""Every disclosure and every refusal through the REST surface writes its AuditEvents to the
hash chain before the response leaves, and when the chain cannot be written nothing is
disclosed (503). Events carry references and codes, never clinical content."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.audit.chain import load_public_key, public_key_path
from gateway.audit.trail import MemoryAuditLog
from gateway.clock import FrozenClock
from gateway.settings import Settings
from gateway.store.sql import SqlStore
from tests.support.network import (
    ALL,
    BASE,
    FHIR,
    partner_client,
    post,
    reading_requests,
    release_consent,
)
from tests.support.records import care_plan, patient, referral

INTERACTION = "http://hl7.org/fhir/restful-interaction"


def audit_log(app_client: TestClient) -> list[dict[str, Any]]:
    chain = app_client.app.state.gateway.audit  # type: ignore[attr-defined]
    return [orjson.loads(row[2]) for row in chain.rows()]


def subtypes(event: dict[str, Any]) -> set[str]:
    return {c["code"] for c in event["subtype"]}


def entities(event: dict[str, Any], role: str) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if e["role"]["code"] == role]


def requestor(event: dict[str, Any]) -> dict[str, Any]:
    agents: list[dict[str, Any]] = [a for a in event["agent"] if a["requestor"]]
    (agent,) = agents
    return agent


def new_events(client: TestClient, before: int) -> list[dict[str, Any]]:
    return audit_log(client)[before:]


def test_a_read_writes_one_balp_event_naming_partner_patient_resource_and_purpose(
    shelter: TestClient, shelter_record: dict[str, str]
) -> None:
    before = len(audit_log(shelter))
    assert shelter.get(f"/fhir/CarePlan/{shelter_record['plan']}").status_code == 200
    (event,) = new_events(shelter, before)
    assert event["resourceType"] == "AuditEvent"
    assert event["type"]["code"] == "rest"
    assert "read" in subtypes(event)
    assert event["action"] == "R"
    assert event["outcome"] == "0"
    agent = requestor(event)
    assert agent["who"]["reference"] == "Organization/riverside-shelter"
    assert agent["altId"] == "riverside-shelter"
    assert agent["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"
    assert entities(event, "1") == [f"Patient/{shelter_record['patient']}"]
    assert entities(event, "4") == [f"CarePlan/{shelter_record['plan']}/_history/1"]
    assert event["source"]["observer"]["display"] == "care-gateway"
    text = orjson.dumps(event).decode()
    for secret in ("Álvarez", "Safety plan", "1994-03-17", "RSH-000412"):
        assert secret not in text


def test_a_release_names_the_consent_and_the_redactions_applied(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"/fhir/Patient/{shelter_record['patient']}"
    doc = shelter.get(url).json()
    shelter.put(url, content=orjson.dumps({**doc, "telecom": [{"system": "phone",
                "value": "555-0100"}]}), headers=FHIR)  # fmt: skip
    consent = post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"])).json()
    before = len(audit_log(clinic))
    assert clinic.get(url).status_code == 200
    (event,) = new_events(clinic, before)
    assert requestor(event)["policy"] == [f"{BASE}/fhir/Consent/{consent['id']}"]
    (entity,) = [e for e in event["entity"] if e["role"]["code"] == "4"]
    details = {d["type"]: d["valueString"] for d in entity["detail"]}
    assert details["decision"].startswith(f"consent:Consent/{consent['id']}#")
    assert "patient-contact-details" in details["redactions"]
    assert "partner-local-identifiers" in details["redactions"]
    assert "555-0100" not in orjson.dumps(event).decode()


def test_a_refused_read_is_audited_as_a_refusal_and_answers_like_an_absent_record(
    clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    before = len(audit_log(clinic))
    assert clinic.get(f"/fhir/CarePlan/{shelter_record['plan']}").status_code == 404
    (event,) = new_events(clinic, before)
    assert event["outcome"] == "4"
    assert event["outcomeDesc"] == "no-permit"
    # The record asked for, never its patient: an absent id has none, and the refusal must
    # cost what an absence costs (the review finds probes of her records by entity).
    assert entities(event, "1") == []
    assert entities(event, "4") == [f"CarePlan/{shelter_record['plan']}"]
    assert "refused:no-permit" in subtypes(event)


def test_a_search_writes_one_event_per_patient_with_the_query(
    shelter: TestClient, shelter_record: dict[str, str]
) -> None:
    others = [
        post(shelter, "/fhir/Patient", patient("Okafor", "Amina", mrn=f"RSH-{n}")).json()["id"]
        for n in (2, 3)
    ]
    for pid in others:
        post(shelter, "/fhir/CarePlan", care_plan(pid))
    before = len(audit_log(shelter))
    found = shelter.get("/fhir/CarePlan?status=active&_count=10").json()
    assert found["total"] == 3
    events = new_events(shelter, before)
    assert len(events) == 3
    patients = sorted(p for e in events for p in entities(e, "1"))
    assert patients == sorted(f"Patient/{p}" for p in [shelter_record["patient"], *others])
    seal = shelter.app.state.gateway.audit_seal  # type: ignore[attr-defined]
    for event in events:
        assert "search-type" in subtypes(event)
        (stored,) = [e for e in event["entity"] if e["role"]["code"] == "24"]
        assert "query" not in stored, "the query is sealed in the chain, never in clear"
        assert "status=active" not in orjson.dumps(event).decode()
        (query,) = [e for e in seal.open(event)["entity"] if e["role"]["code"] == "24"]
        assert base64.b64decode(query["query"]).decode() == "status=active&_count=10"


def test_a_search_that_finds_nothing_still_audits_the_query(clinic: TestClient) -> None:
    before = len(audit_log(clinic))
    assert clinic.get("/fhir/Patient?family=alvarez").json()["total"] == 0
    (event,) = new_events(clinic, before)
    assert entities(event, "1") == []
    assert entities(event, "4") == []


def test_included_resources_are_audited_with_their_patient(
    shelter: TestClient, shelter_record: dict[str, str]
) -> None:
    before = len(audit_log(shelter))
    shelter.get(
        f"/fhir/ServiceRequest?_id={shelter_record['referral']}&_include=ServiceRequest:subject"
    )
    (event,) = new_events(shelter, before)
    assert sorted(entities(event, "4")) == sorted(
        [
            f"ServiceRequest/{shelter_record['referral']}/_history/1",
            f"Patient/{shelter_record['patient']}/_history/1",
        ]
    )


def test_a_scope_refusal_is_audited(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock
) -> None:
    with partner_client(
        settings, sql_store, clock, "harbor-clinic", "clinic", ("system/CarePlan.rs",)
    ) as narrow:
        before = len(audit_log(narrow))
        assert narrow.get("/fhir/Patient").status_code == 403
        (event,) = new_events(narrow, before)
    assert event["outcome"] == "4"
    assert event["outcomeDesc"] == "scope"


def test_a_request_without_a_valid_token_is_audited_as_a_token_refusal(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock
) -> None:
    with TestClient(create_app(settings, store=sql_store, clock=clock), base_url=BASE) as anon:
        before = len(audit_log(anon))
        assert anon.get("/fhir/Patient/p1").status_code == 401
        # Counted durably before the 401, folded into the chain once its minute has closed.
        assert new_events(anon, before) == []
        anon.app.state.gateway.audit.fold_noise()  # type: ignore[attr-defined]
        (event,) = new_events(anon, before)
    assert event["outcome"] == "4"
    assert event["outcomeDesc"] == "token:read"
    assert requestor(event)["who"] == {"display": "unauthenticated client"}
    (aggregate,) = event["extension"]
    assert {"url": "count", "valueInteger": 1} in aggregate["extension"]


def test_recording_and_revoking_a_consent_are_audited(
    shelter: TestClient, shelter_record: dict[str, str]
) -> None:
    before = len(audit_log(shelter))
    consent = post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"])).json()
    revoked = {**consent, "status": "inactive"}
    shelter.put(f"/fhir/Consent/{consent['id']}", content=orjson.dumps(revoked), headers=FHIR)
    recorded, revoke = new_events(shelter, before)
    assert {"create", "consent-create"} <= subtypes(recorded)
    assert {"update", "consent-revoke"} <= subtypes(revoke)
    assert entities(revoke, "1") == [f"Patient/{shelter_record['patient']}"]


def test_break_glass_is_flagged(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock
) -> None:
    with partner_client(settings, sql_store, clock, "harbor-clinic", "clinic") as clinic:
        survivor = post(clinic, "/fhir/Patient", patient(mrn="HCC-40")).json()["id"]
        plan = post(clinic, "/fhir/CarePlan", care_plan(survivor)).json()["id"]
    with partner_client(
        settings, sql_store, clock, "st-marys-hospital", "hospital", purposes=("ETREAT",)
    ) as emergency:
        before = len(audit_log(emergency))
        assert emergency.get(f"/fhir/CarePlan/{plan}").status_code == 200
        (event,) = new_events(emergency, before)
    assert "break-glass" in subtypes(event)
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"


def test_every_interaction_of_a_bundle_is_audited(
    shelter: TestClient, shelter_record: dict[str, str]
) -> None:
    before = len(audit_log(shelter))
    post(
        shelter,
        "/fhir",
        {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"CarePlan/{shelter_record['plan']}"}},
            {"request": {"method": "GET", "url": "Task?_count=5"}},
            {"resource": referral(shelter_record["patient"]),
             "request": {"method": "POST", "url": "ServiceRequest"}}]},
    )  # fmt: skip
    kinds = [subtypes(e) & {"read", "search-type", "create"} for e in new_events(shelter, before)]
    assert kinds == [{"read"}, {"search-type"}, {"create"}]


@pytest.fixture
def unaudited(settings: Settings, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    """The shelter, on an app whose audit log cannot be written (a full disk, a lost link)."""
    with partner_client(
        settings, sql_store, clock, "riverside-shelter", "shelter",
        audit=MemoryAuditLog(failing=True),
    ) as client:  # fmt: skip
        yield client


def test_when_the_audit_log_cannot_be_written_nothing_is_disclosed(
    unaudited: TestClient, shelter_record: dict[str, str]
) -> None:
    for url in (
        f"/fhir/Patient/{shelter_record['patient']}",
        f"/fhir/Patient/{shelter_record['patient']}/_history",
        f"/fhir/Patient/{shelter_record['patient']}/_history/1",
        "/fhir/Patient?family=alvarez",
        "/fhir/CarePlan",
    ):
        response = unaudited.get(url)
        assert response.status_code == 503, url
        assert response.json()["resourceType"] == "OperationOutcome"
        for secret in ("Álvarez", "Safety plan", "1994-03-17", shelter_record["patient"]):
            assert secret not in response.text, url


def test_the_chain_verifies_after_a_day_of_requests(
    settings: Settings, shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"]))
    for url in ("/fhir/CarePlan", f"/fhir/Patient/{shelter_record['patient']}", "/fhir/Task"):
        clinic.get(url)
        shelter.get(url)
    chain = shelter.app.state.gateway.audit  # type: ignore[attr-defined]
    result = chain.verify(load_public_key(public_key_path(settings.keys_dir)))
    assert result.ok, result
    assert result.events >= 10


def test_every_route_that_returns_survivor_data_writes_an_event_first(
    shelter: TestClient, shelter_record: dict[str, str]
) -> None:
    """Walk every route the app has, as the partner that holds the record: whatever returns the
    survivor's data must have written at least one AuditEvent naming the record. A route added
    later that discloses without auditing fails here."""
    walked = 0
    for method, path, url, body, headers in reading_requests(
        shelter.app.routes,  # type: ignore[attr-defined]
        "Patient",
        shelter_record["patient"],
        skip=("DELETE",),  # writes are audited by the Consent story above
    ):
        if not path.startswith("/fhir"):
            continue
        before = len(audit_log(shelter))
        response = shelter.request(method, url, content=body, headers=headers)
        walked += 1
        if "RSH-000412" in response.text:
            named = [r for e in new_events(shelter, before) for r in entities(e, "1")]
            assert f"Patient/{shelter_record['patient']}" in named, (method, path)
    assert walked >= 6


# -- exactly the expected events, interaction by interaction ------------------------------------

P = "patient"  # the event names the survivor (entity role 1)
ROWS = [
    # (who, method, url, body, expected [(interaction, outcome, names the survivor)])
    ("shelter", "GET", "/fhir/Patient/{patient}", None, [("read", "0", P)]),
    ("shelter", "GET", "/fhir/Patient/{patient}/_history/1", None, [("vread", "0", P)]),
    ("shelter", "GET", "/fhir/Patient/{patient}/_history", None, [("history-instance", "0", P)]),
    ("shelter", "GET", "/fhir/CarePlan?patient={patient}", None, [("search-type", "0", P)]),
    ("shelter", "POST", "/fhir/CarePlan/_search", "patient={patient}", [("search-type", "0", P)]),
    ("clinic", "GET", "/fhir/CarePlan/{plan}", None, [("read", "0", P)]),
    ("legal-aid", "GET", "/fhir/CarePlan/{plan}", None, [("read", "4", None)]),
    ("shelter", "POST", "/fhir/ServiceRequest", "referral", [("create", "0", P)]),
    ("shelter", "PUT", "/fhir/Task/{task}", "task", [("update", "0", P)]),
    ("shelter", "DELETE", "/fhir/Task/{task}", None, [("delete", "0", P)]),
    ("clinic", "DELETE", "/fhir/Task/{task}", None, [("delete", "4", P)]),
    ("shelter", "POST", "/fhir", "batch", [("read", "0", P), ("search-type", "0", P)]),
    ("compliance", "GET", "/fhir/Consent/$explain?partner=harbor-clinic&resource=Consent/{plan}",
     None, [("operation", "4", None)]),
    ("explainer", "GET", "/fhir/Consent/$explain?partner=harbor-clinic&resource=CarePlan/{plan}",
     None, [("operation", "0", P)]),
    ("compliance", "GET", "/fhir/Consent/$explain?partner=harbor-clinic&resource=CarePlan/{plan}",
     None, [("read", "4", None)]),
    ("compliance", "GET", "/fhir/AuditEvent?patient={patient}", None, [("search-type", "0", P)]),
    ("compliance", "GET", "/fhir/Patient/{patient}/$accounting-of-disclosures", None,
     [("operation", "0", P)]),
    ("narrow", "GET", "/fhir/Patient", None, [("search-type", "4", None)]),
    ("clinic", "GET", "/fhir/AuditEvent", None, [("search-type", "4", None)]),
]  # fmt: skip


@pytest.mark.parametrize(("who", "method", "url", "body", "expected"), ROWS)
def test_each_interaction_writes_exactly_the_expected_events(
    settings: Settings,
    sql_store: SqlStore,
    clock: FrozenClock,
    shelter: TestClient,
    shelter_record: dict[str, str],
    who: str,
    method: str,
    url: str,
    body: str | None,
    expected: list[tuple[str, str, str | None]],
) -> None:
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"]))
    target = url.format(**shelter_record)
    task_doc = shelter.get(f"/fhir/Task/{shelter_record['task']}").json()
    contents: dict[str | None, tuple[bytes | None, str]] = {
        None: (None, "application/fhir+json"),
        "referral": (orjson.dumps(referral(shelter_record["patient"])), "application/fhir+json"),
        "task": (orjson.dumps({**task_doc, "status": "accepted"}), "application/fhir+json"),
        "batch": (orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"Patient/{shelter_record['patient']}"}},
            {"request": {"method": "GET", "url": f"Task?patient={shelter_record['patient']}"}}]}),
            "application/fhir+json"),
    }  # fmt: skip
    content, media = contents.get(body, (None, ""))
    if body and body.startswith("patient="):
        content, media = body.format(**shelter_record).encode(), "application/x-www-form-urlencoded"
    clients = {
        "clinic": ("harbor-clinic", "clinic", ALL, ("TREAT",)),
        "legal-aid": ("northside-legal-aid", "legal-aid", ALL, ("HLEGAL",)),
        "compliance": ("compliance-office", "compliance",
                       ("system/AuditEvent.rs", "system/Consent.rs", "system/Organization.rs"),
                       ("HCOMPL",)),
        "explainer": ("compliance-office", "compliance", ("system/CarePlan.rs",), ("HCOMPL",)),
        "narrow": ("harbor-clinic", "clinic", ("system/CarePlan.rs",), ("TREAT",)),
    }  # fmt: skip
    if who == "shelter":
        client = shelter
        before = len(audit_log(shelter))
        response = client.request(method, target, content=content, headers={"Content-Type": media})
    else:
        partner, kind, scopes, purposes = clients[who]
        with partner_client(settings, sql_store, clock, partner, kind, scopes, purposes) as client:
            before = len(audit_log(client))
            response = client.request(
                method, target, content=content, headers={"Content-Type": media}
            )
    assert response.status_code < 500, response.text
    got = [
        (
            next(c["code"] for c in e["subtype"] if c["system"] == INTERACTION),
            e["outcome"],
            P if entities(e, "1") == [f"Patient/{shelter_record['patient']}"] else None,
        )
        for e in new_events(shelter, before)
    ]
    assert got == expected


def test_a_conditional_create_that_matches_is_audited_as_the_disclosure_it_is(
    shelter: TestClient, shelter_record: dict[str, str]
) -> None:
    doc = patient("Okafor", "Amina", mrn="RSH-COND-1")
    first = shelter.post(
        "/fhir/Patient",
        content=orjson.dumps(doc),
        headers={**FHIR, "If-None-Exist": "identifier=RSH-COND-1"},
    )
    assert first.status_code == 201
    before = len(audit_log(shelter))
    again = shelter.post(
        "/fhir/Patient",
        content=orjson.dumps(doc),
        headers={**FHIR, "If-None-Exist": "identifier=RSH-COND-1"},
    )
    assert again.status_code == 200  # the record it found, in the answer
    (event,) = new_events(shelter, before)
    assert "search-type" in subtypes(event)
    assert entities(event, "4") == [f"Patient/{first.json()['id']}/_history/1"]
