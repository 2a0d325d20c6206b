"""Who sees what through the REST surface, before any Consent is involved: a partner sees the
records it contributed and the gateway's directory entries, and nothing else exists for it.
Every route goes through ``ConsentedStore``; a route that did not would fail the route walk."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.clock import FrozenClock
from gateway.settings import Settings
from gateway.store.sql import SqlStore
from tests.support.network import FHIR, partner_client, post, reading_requests, release_consent
from tests.support.records import MRN, care_plan, patient, referral
from tests.support.valid import valid


def test_a_partner_reads_back_what_it_contributed(
    shelter: TestClient, shelter_record: dict[str, str]
) -> None:
    assert shelter.get(f"/fhir/Patient/{shelter_record['patient']}").status_code == 200


def test_another_partner_gets_the_same_404_as_for_a_record_that_does_not_exist(
    clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    hidden = clinic.get(f"/fhir/Patient/{shelter_record['patient']}")
    absent = clinic.get("/fhir/Patient/00000000-0000-4000-8000-000000000000")
    assert hidden.status_code == absent.status_code == 404
    assert hidden.json()["issue"][0]["code"] == absent.json()["issue"][0]["code"] == "not-found"
    assert "Álvarez" not in hidden.text


def test_search_neither_returns_nor_counts_another_partners_records(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    own = post(clinic, "/fhir/Patient", patient("Okafor", "Amina", mrn="HCC-9")).json()
    found = clinic.get("/fhir/Patient?_count=1").json()
    assert found["total"] == 1
    assert [e["resource"]["id"] for e in found["entry"]] == [own["id"]]
    assert not [link for link in found["link"] if link["relation"] == "next"]
    by_identifier = clinic.get(f"/fhir/Patient?identifier={MRN}|RSH-000412").json()
    assert by_identifier["total"] == 0
    assert shelter.get("/fhir/Patient?_summary=count").json()["total"] == 1


def test_paging_counts_only_visible_records_and_every_page_but_the_last_is_full(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    mine = post(clinic, "/fhir/Patient", patient("Nguyen", "Linh", mrn="HCC-1")).json()["id"]
    for n in range(5):
        post(shelter, "/fhir/CarePlan", care_plan(shelter_record["patient"], title=f"Shelter {n}"))
        post(clinic, "/fhir/CarePlan", care_plan(mine, title=f"Clinic {n}"))
    page = clinic.get("/fhir/CarePlan?_count=2").json()
    sizes = []
    while True:
        assert page["total"] == 5
        sizes.append(len(page["entry"]))
        assert all("Clinic" in e["resource"]["title"] for e in page["entry"])
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        page = clinic.get(nxt[0]).json()
    assert sizes == [2, 2, 1]


def test_include_never_pulls_in_a_hidden_record(
    clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    own = post(clinic, "/fhir/ServiceRequest", referral(shelter_record["patient"])).json()
    bundle = clinic.get(
        f"/fhir/ServiceRequest?_id={own['id']}&_include=ServiceRequest:subject"
        "&_revinclude=Task:focus&_include=ServiceRequest:performer"
    ).json()
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types == ["ServiceRequest"]
    assert "Álvarez" not in orjson.dumps(bundle).decode()


def test_another_partner_cannot_change_or_delete_a_record_it_cannot_see(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"/fhir/Patient/{shelter_record['patient']}"
    doc = shelter.get(url).json()
    overwrite = clinic.put(url, content=orjson.dumps({**doc, "gender": "male"}), headers=FHIR)
    assert overwrite.status_code == 404
    assert clinic.delete(url).status_code == 404
    after = shelter.get(url)
    assert after.status_code == 200
    assert after.json()["gender"] == "female"
    assert after.json()["meta"]["versionId"] == "1"


def test_history_and_vread_of_a_hidden_record_are_404(
    clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"/fhir/Patient/{shelter_record['patient']}"
    assert clinic.get(f"{url}/_history").status_code == 404
    assert clinic.get(f"{url}/_history/1").status_code == 404


def test_a_deleted_record_is_gone_for_its_contributor_and_absent_for_others(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"/fhir/CarePlan/{shelter_record['plan']}"
    assert shelter.delete(url).status_code == 204
    assert shelter.get(url).status_code == 410
    assert clinic.get(url).status_code == 404


def test_a_transaction_cannot_read_or_write_around_visibility(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"Patient/{shelter_record['patient']}"
    reading = post(
        clinic,
        "/fhir",
        {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "GET", "url": url}}]},
    )  # fmt: skip
    assert reading.status_code == 404
    batch = post(
        clinic,
        "/fhir",
        {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": url}},
            {"request": {"method": "GET", "url": f"Patient?identifier={MRN}|RSH-000412"}}]},
    ).json()  # fmt: skip
    assert batch["entry"][0]["response"]["status"] == "404"
    assert batch["entry"][1]["resource"]["total"] == 0
    doc = shelter.get(f"/fhir/{url}").json()
    writing = post(
        clinic,
        "/fhir",
        {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient("Okafor", "Amina", mrn="HCC-2"),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {**doc, "gender": "male"}, "request": {"method": "PUT", "url": url}}]},
    )  # fmt: skip
    assert writing.status_code == 404
    assert clinic.get("/fhir/Patient?_summary=count").json()["total"] == 0
    assert shelter.get(f"/fhir/{url}").json()["gender"] == "female"


def test_conditional_create_does_not_match_another_partners_record(
    clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    criteria = {"If-None-Exist": f"identifier={MRN}|RSH-000412"}
    response = post(clinic, "/fhir/Patient", patient(mrn="RSH-000412"), **criteria)
    assert response.status_code == 201
    assert response.json()["id"] != shelter_record["patient"]


def test_the_gateways_directory_organizations_are_visible_to_every_partner_but_read_only(
    settings: Settings, sql_store: SqlStore, clinic: TestClient
) -> None:
    entry = {
        "resourceType": "Organization",
        "id": "riverside-shelter",
        "name": "Riverside Safe Haven",
    }
    sql_store.update("Organization", "riverside-shelter", valid(entry), if_match=None)
    assert clinic.get("/fhir/Organization/riverside-shelter").status_code == 200
    renamed = {**entry, "name": "Somewhere Else"}
    url = "/fhir/Organization/riverside-shelter"
    refused = clinic.put(url, content=orjson.dumps(renamed), headers=FHIR)
    assert refused.status_code == 403
    assert clinic.delete(url).status_code == 403
    assert clinic.get(url).json()["name"] == "Riverside Safe Haven"


def test_a_partners_own_organization_record_is_not_a_directory_entry(
    shelter: TestClient, clinic: TestClient
) -> None:
    org = {
        "resourceType": "Organization",
        "name": "Riverside Safe Haven",
        "address": [{"line": ["12 Elm Street"], "city": "Riverside"}],
    }
    created = post(shelter, "/fhir/Organization", org).json()
    assert clinic.get(f"/fhir/Organization/{created['id']}").status_code == 404


@pytest.mark.parametrize(
    ("scopes", "method", "url", "status"),
    [
        (("system/CarePlan.rs",), "GET", "/fhir/CarePlan", 200),
        (("system/CarePlan.rs",), "GET", "/fhir/Patient", 403),
        (("system/CarePlan.rs",), "POST", "/fhir/CarePlan", 403),
        (("system/*.read",), "DELETE", "/fhir/CarePlan/any", 403),
        (("system/Patient.r",), "GET", "/fhir/Patient", 403),
        (("system/Patient.s",), "GET", "/fhir/Patient/any", 403),
        (("system/CarePlan.s",), "GET", "/fhir/CarePlan?_include=CarePlan:subject:Patient", 403),
    ],
)
def test_scopes_bound_every_interaction(
    settings: Settings,
    sql_store: SqlStore,
    clock: FrozenClock,
    scopes: tuple[str, ...],
    method: str,
    url: str,
    status: int,
) -> None:
    with partner_client(settings, sql_store, clock, "harbor-clinic", "clinic", scopes) as client:
        body = orjson.dumps(care_plan("p1")) if method == "POST" else None
        response = client.request(method, url, content=body, headers=FHIR)
    assert response.status_code == status
    if status == 403:
        assert response.json()["issue"][0]["code"] == "forbidden"


def test_every_route_of_the_app_goes_through_consent(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, shelter_record: dict[str, str]
) -> None:
    """Walk every route the app has, as a partner that contributed nothing, with the shelter's
    record ids in every path parameter: the survivor's data never comes back. A route added
    later that reads around ``ConsentedStore`` fails here."""
    with partner_client(settings, sql_store, clock, "harbor-clinic", "clinic") as client:
        app = client.app
        walked = 0
        for resource_type, resource_id in (
            ("Patient", shelter_record["patient"]),
            ("CarePlan", shelter_record["plan"]),
            ("Task", shelter_record["task"]),
        ):
            for method, path, url, body, headers in reading_requests(
                app.routes,  # type: ignore[attr-defined]
                resource_type,
                resource_id,
                skip=(),
            ):
                response = client.request(method, url, content=body, headers=headers)
                walked += 1
                for secret in ("Álvarez", "RSH-000412", "1994-03-17", "Safety plan"):
                    assert secret not in response.text, (method, path, response.status_code)
        assert walked >= 20


# -- labels at write time ------------------------------------------------------------------------

V3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def security_codes(resource: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in resource.get("meta", {}).get("security", [])}


def test_shelter_data_is_stored_restricted(shelter: TestClient) -> None:
    survivor = post(shelter, "/fhir/Patient", patient()).json()
    assert (CONFIDENTIALITY, "R") in security_codes(survivor)


def test_substance_use_and_trafficking_codes_are_labelled_and_searchable(
    clinic: TestClient,
) -> None:
    survivor = post(clinic, "/fhir/Patient", patient(mrn="HCC-5")).json()["id"]
    sud = referral(survivor)
    sud["reasonCode"] = [
        {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F11.20"}]}
    ]
    trafficking = referral(survivor)
    trafficking["reasonCode"] = [
        {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "T74.51XA"}]}
    ]
    first = post(clinic, "/fhir/ServiceRequest", sud).json()
    second = post(clinic, "/fhir/ServiceRequest", trafficking).json()
    assert (V3, "ETH") in security_codes(first)
    assert (V3, "SDV") in security_codes(second)
    found = clinic.get(f"/fhir/ServiceRequest?_security={V3}|ETH").json()
    assert [e["resource"]["id"] for e in found["entry"]] == [first["id"]]


def test_the_writers_own_labels_are_kept(clinic: TestClient) -> None:
    own = {**patient(mrn="HCC-6"), "meta": {"security": [{"system": V3, "code": "PSY"}]}}
    stored = post(clinic, "/fhir/Patient", own).json()
    assert (V3, "PSY") in security_codes(stored)


# -- release under a survivor's Consent (reads by id) -------------------------------------------


def test_a_written_time_limited_consent_releases_the_shelters_plan_to_the_clinic(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"/fhir/CarePlan/{shelter_record['plan']}"
    assert clinic.get(url).status_code == 404
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"]))
    released = clinic.get(url)
    assert released.status_code == 200
    assert released.json()["id"] == shelter_record["plan"]


def test_the_released_patient_comes_without_the_ways_to_reach_them(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"/fhir/Patient/{shelter_record['patient']}"
    doc = shelter.get(url).json()
    doc["telecom"] = [{"system": "phone", "value": "555-0100"}]
    shelter.put(url, content=orjson.dumps(doc), headers=FHIR)
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"]))
    seen = clinic.get(url)
    assert seen.status_code == 200
    assert "telecom" not in seen.json()
    assert "555-0100" not in seen.text
    assert "555-0100" in shelter.get(url).text


def test_a_shelter_address_is_not_released_without_a_provision_naming_locis(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"/fhir/Patient/{shelter_record['patient']}"
    doc = shelter.get(url).json()
    doc["address"] = [{"line": ["12 Elm Street"], "city": "Riverside"}]
    stored = shelter.put(url, content=orjson.dumps(doc), headers=FHIR).json()
    assert "LOCIS" in {c["code"] for c in stored["meta"]["security"]}
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"]))
    hidden = clinic.get(url)
    assert hidden.status_code == 404
    assert "12 Elm Street" not in hidden.text


def test_revoking_the_consent_takes_effect_on_the_very_next_request(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"/fhir/CarePlan/{shelter_record['plan']}"
    consent = post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"])).json()
    assert clinic.get(url).status_code == 200
    revoked = {**consent, "status": "inactive"}
    assert (
        shelter.put(
            f"/fhir/Consent/{consent['id']}", content=orjson.dumps(revoked), headers=FHIR
        ).status_code
        == 200
    )
    assert clinic.get(url).status_code == 404


def test_a_consent_for_another_recipient_or_purpose_releases_nothing(
    settings: Settings,
    sql_store: SqlStore,
    clock: FrozenClock,
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
) -> None:
    patient_id = shelter_record["patient"]
    post(shelter, "/fhir/Consent", release_consent(patient_id, recipient="Organization/other"))
    post(shelter, "/fhir/Consent", release_consent(patient_id, purpose="HLEGAL"))
    assert clinic.get(f"/fhir/CarePlan/{shelter_record['plan']}").status_code == 404
    with partner_client(
        settings, sql_store, clock, "northside-legal-aid", "legal-aid", purposes=("HLEGAL",)
    ) as legal_aid:
        assert legal_aid.get(f"/fhir/CarePlan/{shelter_record['plan']}").status_code == 404


@pytest.mark.parametrize(
    ("start", "end"),
    [("2026-11-01", "2028-11-01"), ("2026-01-01", "2026-11-22")],
    ids=["longer-than-a-year-for-shelter-data", "expired-yesterday"],
)
def test_a_consent_outside_its_time_limits_releases_nothing(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str], start: str, end: str
) -> None:
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"], start=start, end=end))
    assert clinic.get(f"/fhir/CarePlan/{shelter_record['plan']}").status_code == 404


def test_a_consented_recipient_still_cannot_change_the_record(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"/fhir/CarePlan/{shelter_record['plan']}"
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"]))
    doc = clinic.get(url).json()
    changed = {**doc, "status": "revoked"}
    assert clinic.put(url, content=orjson.dumps(changed), headers=FHIR).status_code == 403
    assert shelter.get(url).json()["status"] == "active"


def test_a_released_record_that_is_deleted_is_gone_for_the_recipient_only(
    settings: Settings,
    sql_store: SqlStore,
    clock: FrozenClock,
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
) -> None:
    url = f"/fhir/CarePlan/{shelter_record['plan']}"
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"]))
    assert clinic.get(f"{url}/_history").status_code == 200
    shelter.delete(url)
    assert clinic.get(url).status_code == 410
    with partner_client(settings, sql_store, clock, "st-marys-hospital", "hospital") as hospital:
        assert hospital.get(url).status_code == 404


# -- recording Consents --------------------------------------------------------------------------


def test_only_the_advocates_kinds_the_policy_names_may_record_a_consent(
    settings: Settings,
    sql_store: SqlStore,
    clock: FrozenClock,
    shelter_record: dict[str, str],
) -> None:
    release = release_consent(shelter_record["patient"])
    with partner_client(settings, sql_store, clock, "compliance-office", "compliance") as office:
        refused = post(office, "/fhir/Consent", release)
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["code"] == "forbidden"


def test_a_consent_without_the_signed_form_is_refused_naming_the_element(
    shelter: TestClient, shelter_record: dict[str, str]
) -> None:
    unsigned = release_consent(shelter_record["patient"])
    del unsigned["sourceAttachment"]
    response = post(shelter, "/fhir/Consent", unsigned)
    assert response.status_code == 422
    assert "Consent.sourceAttachment" in response.json()["issue"][0]["expression"]
    assert shelter.get("/fhir/Consent?_summary=count").json()["total"] == 0


# -- Consent/$explain ----------------------------------------------------------------------------


def explain(client: TestClient, **params: str) -> Any:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return client.get(f"/fhir/Consent/$explain?{query}")


def parameters(response: Any) -> dict[str, Any]:
    doc = response.json()
    assert doc["resourceType"] == "Parameters"
    return {
        p["name"]: p.get("valueBoolean", p.get("valueString", p.get("valueReference")))
        for p in doc["parameter"]
    }


def test_compliance_sees_why_the_clinic_is_refused_then_released(
    settings: Settings,
    sql_store: SqlStore,
    clock: FrozenClock,
    shelter: TestClient,
    shelter_record: dict[str, str],
) -> None:
    target = f"CarePlan/{shelter_record['plan']}"
    with partner_client(settings, sql_store, clock, "compliance-office", "compliance") as office:
        before = parameters(explain(office, partner="harbor-clinic", resource=target))
        assert before["permit"] is False
        assert before["rule"] == "no-permit"
        consent = post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"]))
        after = parameters(explain(office, partner="harbor-clinic", resource=target))
        assert after["permit"] is True
        assert after["consent"] == {"reference": f"Consent/{consent.json()['id']}"}
        legal = parameters(
            explain(office, partner="northside-legal-aid", resource=target, purpose="HLEGAL")
        )
        assert legal["permit"] is False
        response = explain(office, partner="harbor-clinic", resource=target)
        assert "Safety plan" not in response.text


def test_explain_is_for_compliance_and_administration_only(
    clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    refused = explain(
        clinic, partner="harbor-clinic", resource=f"Patient/{shelter_record['patient']}"
    )
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("partner", "resource", "status"),
    [("nobody", "Patient/x", 404), ("harbor-clinic", "Patient/none", 404),
     ("harbor-clinic", "Patient", 400), ("harbor-clinic", "Observation/1", 404)],
)  # fmt: skip
def test_explain_with_unknown_or_malformed_targets(
    settings: Settings,
    sql_store: SqlStore,
    clock: FrozenClock,
    partner: str,
    resource: str,
    status: int,
) -> None:
    with partner_client(settings, sql_store, clock, "compliance-office", "compliance") as office:
        assert explain(office, partner=partner, resource=resource).status_code == status
