"""The FHIR REST surface at /fhir, as the contract describes it, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.store.sql import SqlStore
from tests.support.network import FHIR
from tests.support.records import MRN, care_plan, patient, referral, task
from tests.support.valid import valid


def post(client: TestClient, url: str, resource: dict[str, Any], **headers: str) -> Any:
    return client.post(url, content=orjson.dumps(resource), headers={**FHIR, **headers})


def put(client: TestClient, url: str, resource: dict[str, Any], **headers: str) -> Any:
    return client.put(url, content=orjson.dumps(resource), headers={**FHIR, **headers})


def outcome_codes(response: Any) -> list[str]:
    doc = response.json()
    assert doc["resourceType"] == "OperationOutcome"
    return [issue["code"] for issue in doc["issue"]]


# -- create, read, update, delete ----------------------------------------------------------------


def test_create_answers_201_with_location_etag_and_the_stored_resource(client: TestClient) -> None:
    response = post(client, "/fhir/Patient", patient())
    assert response.status_code == 201
    doc = response.json()
    assert response.headers["location"] == (
        f"http://gateway.test/fhir/Patient/{doc['id']}/_history/1"
    )
    assert response.headers["etag"] == 'W/"1"'
    assert "last-modified" in response.headers
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert doc["meta"]["versionId"] == "1"


def test_create_ignores_a_client_supplied_id(client: TestClient) -> None:
    doc = post(client, "/fhir/Patient", {**patient(), "id": "chosen-by-client"}).json()
    assert doc["id"] != "chosen-by-client"


def test_read_serves_exactly_what_create_returned(client: TestClient) -> None:
    created = post(client, "/fhir/Patient", patient())
    read = client.get(f"/fhir/Patient/{created.json()['id']}")
    assert read.status_code == 200
    assert read.content == created.content
    assert read.headers["etag"] == 'W/"1"'


def test_prefer_return_minimal_and_operation_outcome(client: TestClient) -> None:
    minimal = post(client, "/fhir/Patient", patient(), Prefer="return=minimal")
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert "location" in minimal.headers
    informative = post(client, "/fhir/Patient", patient(), Prefer="return=OperationOutcome")
    assert outcome_codes(informative) == ["informational"]


def test_update_with_matching_if_match_then_stale_if_match_is_412(client: TestClient) -> None:
    doc = post(client, "/fhir/Patient", patient()).json()
    doc["gender"] = "other"
    updated = put(client, f"/fhir/Patient/{doc['id']}", doc, **{"If-Match": 'W/"1"'})
    assert updated.status_code == 200
    assert updated.headers["etag"] == 'W/"2"'
    stale = put(client, f"/fhir/Patient/{doc['id']}", doc, **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert outcome_codes(stale) == ["conflict"]


def test_update_never_creates_a_resource_under_a_clients_id(client: TestClient) -> None:
    # updateCreate is off: ids are the server's, so nobody can squat one (a partner not yet
    # added, another partner's next record), and an absent id answers like a hidden one.
    org = {"resourceType": "Organization", "id": "harbor-clinic", "name": "Harbor Community Clinic"}
    response = put(client, "/fhir/Organization/harbor-clinic", org)
    assert response.status_code == 404
    assert client.get("/fhir/Organization/harbor-clinic").status_code == 404
    capability = client.get("/fhir/metadata").json()
    assert {r.get("updateCreate", False) for r in capability["rest"][0]["resource"]} == {False}


def test_update_with_an_id_that_differs_from_the_url_is_400(client: TestClient) -> None:
    doc = post(client, "/fhir/Patient", patient()).json()
    response = put(client, f"/fhir/Patient/{doc['id']}", {**doc, "id": "someone-else"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["id"]


def test_malformed_if_match_is_400(client: TestClient) -> None:
    doc = post(client, "/fhir/Patient", patient()).json()
    response = put(client, f"/fhir/Patient/{doc['id']}", doc, **{"If-Match": "yesterday"})
    assert response.status_code == 400


def test_delete_then_read_is_410_and_history_shows_the_deletion(client: TestClient) -> None:
    doc = post(client, "/fhir/Patient", patient()).json()
    deleted = client.delete(f"/fhir/Patient/{doc['id']}")
    assert deleted.status_code == 204
    gone = client.get(f"/fhir/Patient/{doc['id']}")
    assert gone.status_code == 410
    assert outcome_codes(gone) == ["deleted"]
    history = client.get(f"/fhir/Patient/{doc['id']}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert client.delete(f"/fhir/Patient/{doc['id']}").status_code == 204


def test_deleting_an_unknown_resource_is_404(client: TestClient) -> None:
    assert client.delete("/fhir/Patient/never-existed").status_code == 404


def test_vread_serves_old_versions(client: TestClient) -> None:
    doc = post(client, "/fhir/Patient", patient()).json()
    put(client, f"/fhir/Patient/{doc['id']}", {**doc, "gender": "other"})
    first = client.get(f"/fhir/Patient/{doc['id']}/_history/1")
    assert first.status_code == 200
    assert first.json()["gender"] == "female"
    assert client.get(f"/fhir/Patient/{doc['id']}/_history/9").status_code == 404
    assert client.get(f"/fhir/Patient/{doc['id']}/_history/one").status_code == 404


def test_history_pages_with_next_links(client: TestClient) -> None:
    doc = post(client, "/fhir/Patient", patient()).json()
    for gender in ("other", "unknown", "female", "other"):
        put(client, f"/fhir/Patient/{doc['id']}", {**doc, "gender": gender})
    page = client.get(f"/fhir/Patient/{doc['id']}/_history?_count=2").json()
    assert page["type"] == "history"
    versions = [e["response"]["etag"] for e in page["entry"]]
    while next_link := [link["url"] for link in page["link"] if link["relation"] == "next"]:
        page = client.get(next_link[0]).json()
        versions += [e["response"]["etag"] for e in page["entry"]]
    assert versions == [f'W/"{n}"' for n in (5, 4, 3, 2, 1)]


def test_conditional_create_returns_the_existing_match(client: TestClient) -> None:
    criteria = {"If-None-Exist": f"identifier={MRN}|RSH-000412"}
    first = post(client, "/fhir/Patient", patient(), **criteria)
    again = post(client, "/fhir/Patient", patient(), **criteria)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("criteria", ["", "_count=1", "_sort=_id"])
def test_conditional_create_without_criteria_is_400(client: TestClient, criteria: str) -> None:
    post(client, "/fhir/Patient", patient())
    response = post(client, "/fhir/Patient", patient(), **{"If-None-Exist": criteria or "?"})
    assert response.status_code == 400
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 1


def test_conditional_create_with_several_matches_is_412(client: TestClient) -> None:
    post(client, "/fhir/Patient", patient(mrn="A"))
    post(client, "/fhir/Patient", patient(mrn="B"))
    response = post(client, "/fhir/Patient", patient(), **{"If-None-Exist": "family=alvarez"})
    assert response.status_code == 412


# -- search --------------------------------------------------------------------------------------


def test_search_bundle_has_total_self_link_and_full_urls(client: TestClient) -> None:
    created = post(client, "/fhir/Patient", patient()).json()
    bundle = client.get("/fhir/Patient?name=maria").json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 1
    assert bundle["link"][0]["relation"] == "self"
    assert bundle["entry"][0]["fullUrl"] == f"http://gateway.test/fhir/Patient/{created['id']}"
    assert bundle["entry"][0]["search"] == {"mode": "match"}


def test_search_paging_follows_next_and_previous_links(client: TestClient) -> None:
    survivor = post(client, "/fhir/Patient", patient()).json()["id"]
    plans = [post(client, "/fhir/CarePlan", care_plan(survivor)).json()["id"] for _ in range(5)]
    page = client.get(f"/fhir/CarePlan?patient={survivor}&_count=2").json()
    seen = [e["resource"]["id"] for e in page["entry"]]
    while nxt := [link["url"] for link in page["link"] if link["relation"] == "next"]:
        page = client.get(nxt[0]).json()
        assert page["total"] == 5
        seen += [e["resource"]["id"] for e in page["entry"]]
    assert seen == plans
    previous = [link["url"] for link in page["link"] if link["relation"] == "previous"]
    back = client.get(previous[0]).json()
    assert [e["resource"]["id"] for e in back["entry"]] == plans[2:4]


def test_search_by_post_form_gives_the_same_answer(client: TestClient) -> None:
    post(client, "/fhir/Patient", patient())
    by_get = client.get("/fhir/Patient?family=alvarez").json()
    by_post = client.post(
        "/fhir/Patient/_search",
        content=b"family=alvarez",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ).json()
    assert by_post["total"] == by_get["total"] == 1


def test_search_count_is_capped_and_summary_count_has_no_entries(client: TestClient) -> None:
    post(client, "/fhir/Patient", patient())
    counted = client.get("/fhir/Patient?_summary=count").json()
    assert counted["total"] == 1
    assert "entry" not in counted
    assert client.get("/fhir/Patient?_count=100000").status_code == 200


def test_include_and_revinclude_mark_entries_as_include(
    client: TestClient, sql_store: SqlStore
) -> None:
    directory = {"resourceType": "Organization", "id": "harbor-clinic", "name": "Harbor Clinic"}
    sql_store.update("Organization", "harbor-clinic", valid(directory), if_match=None)
    survivor = post(client, "/fhir/Patient", patient()).json()["id"]
    ref = post(client, "/fhir/ServiceRequest", referral(survivor)).json()["id"]
    post(client, "/fhir/Task", task(ref, survivor))
    bundle = client.get(
        f"/fhir/ServiceRequest?_id={ref}&_include=ServiceRequest:performer&_revinclude=Task:focus"
    ).json()
    modes = sorted((e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"])
    assert modes == [("Organization", "include"), ("ServiceRequest", "match"), ("Task", "include")]
    assert bundle["total"] == 1


@pytest.mark.parametrize(
    ("query", "expression"),
    [
        ("shelter-address=Elm", "shelter-address"),
        ("name:phonetic=maria", "name:phonetic"),
        ("_summary=text", "_summary"),
    ],
)
def test_unsupported_search_parameters_are_400_naming_them(
    client: TestClient, query: str, expression: str
) -> None:
    response = client.get(f"/fhir/Patient?{query}")
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == [expression]


def test_lenient_handling_ignores_unknown_parameters(client: TestClient) -> None:
    response = client.get(
        "/fhir/Patient?shelter-address=Elm", headers={"Prefer": "handling=lenient"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "query",
    ["birthdate=yesterday", "birthdate=sa2020", "_count=-1", "_cursor=%%%", "_sort=name",
     "_include=Patient:name", "_include=*", "subject.name=x"],
)  # fmt: skip
def test_malformed_search_values_are_400(client: TestClient, query: str) -> None:
    assert client.get(f"/fhir/Patient?{query}").status_code == 400


# -- bundles -------------------------------------------------------------------------------------


def _transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_transaction_rewrites_urn_uuid_references(client: TestClient) -> None:
    patient_urn = "urn:uuid:3c0d0a39-5a0e-4b8e-8a4c-8f8e5f0c1a11"
    referral_urn = "urn:uuid:3c0d0a39-5a0e-4b8e-8a4c-8f8e5f0c1a12"
    sr = referral("placeholder")
    sr["subject"] = {"reference": patient_urn}
    work = task("placeholder", "placeholder")
    work["focus"] = {"reference": referral_urn}
    work["for"] = {"reference": patient_urn}
    response = post(
        client,
        "/fhir",
        _transaction(
            [
                {
                    "fullUrl": referral_urn,
                    "resource": sr,
                    "request": {"method": "POST", "url": "ServiceRequest"},
                },
                {"resource": work, "request": {"method": "POST", "url": "Task"}},
                {
                    "fullUrl": patient_urn,
                    "resource": patient(),
                    "request": {"method": "POST", "url": "Patient"},
                },
            ]
        ),
    )
    assert response.status_code == 200
    out = response.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created"] * 3
    sr_id, task_id, patient_id = (e["resource"]["id"] for e in out["entry"])
    stored_task = client.get(f"/fhir/Task/{task_id}").json()
    assert stored_task["focus"]["reference"] == f"ServiceRequest/{sr_id}"
    assert stored_task["for"]["reference"] == f"Patient/{patient_id}"


def test_a_failing_transaction_entry_rolls_back_every_entry(client: TestClient) -> None:
    doc = post(client, "/fhir/Patient", patient()).json()
    response = post(
        client,
        "/fhir",
        _transaction(
            [
                {
                    "resource": patient("Okafor", "Amina", mrn="RSH-2"),
                    "request": {"method": "POST", "url": "Patient"},
                },
                {
                    "resource": doc,
                    "request": {"method": "PUT", "url": f"Patient/{doc['id']}", "ifMatch": 'W/"7"'},
                },
            ]
        ),
    )
    assert response.status_code == 412
    assert client.get("/fhir/Patient?family=okafor").json()["total"] == 0


def test_an_invalid_resource_in_a_transaction_names_its_entry(client: TestClient) -> None:
    response = post(
        client,
        "/fhir",
        _transaction(
            [
                {
                    "resource": {"resourceType": "Patient", "gender": 7},
                    "request": {"method": "POST", "url": "Patient"},
                }
            ]
        ),
    )
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.Patient.gender"]


def test_batch_entries_succeed_or_fail_on_their_own(client: TestClient) -> None:
    response = post(
        client,
        "/fhir",
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
                {"request": {"method": "GET", "url": "Patient/nobody-here"}},
                {"request": {"method": "GET", "url": "Patient?family=alvarez"}},
            ],
        },
    )
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "404", "200 OK"]
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[2]["resource"]["total"] == 1


def test_a_bundle_that_is_not_batch_or_transaction_is_400(client: TestClient) -> None:
    response = post(client, "/fhir", {"resourceType": "Bundle", "type": "collection"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.type"]


# -- hostile input -------------------------------------------------------------------------------


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post(
        "/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/xml"}
    )
    assert response.status_code == 415
    assert outcome_codes(response) == ["not-supported"]


def test_asking_for_xml_is_406(client: TestClient) -> None:
    assert client.get("/fhir/Patient?_format=xml").status_code == 406
    assert (
        client.get("/fhir/Patient", headers={"Accept": "application/fhir+xml"}).status_code == 406
    )


def test_json_format_is_honoured(client: TestClient) -> None:
    response = client.get("/fhir/Patient?_format=application/json")
    assert response.headers["content-type"].startswith("application/json")


def test_body_over_the_limit_is_413_before_parsing(client: TestClient) -> None:
    huge = b'{"resourceType":"Patient","text":"' + b"x" * (65 * 1024) + b'"}'
    response = client.post("/fhir/Patient", content=huge, headers=FHIR)
    assert response.status_code == 413
    assert outcome_codes(response) == ["too-long"]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[1,2]",
        b'{"resourceType": "Patient", "name": [{"family": "A"}]',
        b"\xff\xfe",
        b"null",
    ],
)
def test_malformed_json_is_400_never_500(client: TestClient, raw: bytes) -> None:
    response = client.post("/fhir/Patient", content=raw, headers=FHIR)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_deeply_nested_json_is_400(client: TestClient) -> None:
    deep = b'{"resourceType":"Patient","extension":' + b"[" * 200 + b"]" * 200 + b"}"
    assert client.post("/fhir/Patient", content=deep, headers=FHIR).status_code == 400


def test_invalid_resource_is_422_naming_the_element_not_the_value(client: TestClient) -> None:
    bad = {**patient(), "birthDate": "17/03/1994", "shelterAddress": "12 Elm Street"}
    response = post(client, "/fhir/Patient", bad)
    assert response.status_code == 422
    text = response.text
    assert "Patient.birthDate" in text
    assert "Patient.shelterAddress" in text
    assert "17/03/1994" not in text
    assert "12 Elm Street" not in text


def test_resource_type_that_does_not_match_the_url_is_400(client: TestClient) -> None:
    assert post(client, "/fhir/CarePlan", patient()).status_code == 400


def test_unsupported_resource_type_is_404(client: TestClient) -> None:
    assert client.get("/fhir/Observation/abc").status_code == 404
    assert client.get("/fhir/Observation").status_code == 404


def test_invalid_id_is_400(client: TestClient) -> None:
    assert client.get("/fhir/Patient/" + "x" * 65).status_code == 400
    assert client.get("/fhir/Patient/a_b").status_code == 400


def test_unknown_routes_and_methods_answer_with_operation_outcomes(client: TestClient) -> None:
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert outcome_codes(missing) == ["not-found"]
    wrong = client.patch("/fhir/Patient/abc")
    assert wrong.status_code == 405
    assert outcome_codes(wrong) == ["not-supported"]


# -- auth placeholder, metadata, operations ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", "/fhir/Patient"), ("GET", "/fhir/Patient/abc"), ("POST", "/fhir"),
     ("POST", "/fhir/Patient"), ("PUT", "/fhir/Patient/abc"), ("DELETE", "/fhir/Patient/abc"),
     ("GET", "/fhir/Patient/abc/_history"), ("GET", "/fhir/Patient/abc/_history/1"),
     ("POST", "/fhir/Patient/_search")],
)  # fmt: skip
def test_without_credentials_every_fhir_route_is_401(
    anonymous: TestClient, method: str, url: str
) -> None:
    response = anonymous.request(method, url, content=b"{}", headers=FHIR)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert outcome_codes(response) == ["login"]


def test_capability_statement_needs_no_token_and_lists_what_is_wired(anonymous: TestClient) -> None:
    response = anonymous.get("/fhir/metadata")
    assert response.status_code == 200
    doc = response.json()
    assert doc["fhirVersion"] == "4.0.1"
    rest = doc["rest"][0]
    types = {r["type"]: r for r in rest["resource"]}
    assert set(types) == {
        "Patient", "Organization", "CarePlan", "Consent", "ServiceRequest", "Task",
        "EpisodeOfCare", "Provenance", "Subscription", "AuditEvent",
    }  # fmt: skip
    assert [i["code"] for i in types["AuditEvent"]["interaction"]] == ["search-type"]
    assert {"patient", "agent", "date", "outcome"} <= {
        p["name"] for p in types["AuditEvent"]["searchParam"]
    }
    assert "accounting-of-disclosures" in {o["name"] for o in types["Patient"]["operation"]}
    interactions = {i["code"] for i in types["Patient"]["interaction"]}
    assert interactions == {
        "read", "vread", "update", "delete", "history-instance", "create", "search-type"
    }  # fmt: skip
    assert {"name", "family", "given", "birthdate", "identifier"} <= {
        p["name"] for p in types["Patient"]["searchParam"]
    }
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}


def test_health_and_readiness_need_no_token(anonymous: TestClient) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    assert anonymous.get("/readyz").json() == {"status": "ready"}
    # Metrics outside the demo need their own token: tests/disclose/test_observability.py.
    assert anonymous.get("/metrics").status_code == 403


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    mine = client.get("/fhir/Patient", headers={"X-Request-ID": "trace-42"})
    assert mine.headers["x-request-id"] == "trace-42"
    hostile = client.get("/fhir/Patient", headers={"X-Request-ID": "<script>"})
    assert hostile.headers["x-request-id"] != "<script>"


def test_a_bundle_posted_to_the_base_with_a_trailing_slash_is_processed(client: TestClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Patient?family=alvarez"}}],
    }
    response = post(client, "/fhir/", bundle)
    assert response.status_code == 200
    assert response.json()["type"] == "batch-response"
