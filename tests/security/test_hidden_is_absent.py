"""A record a partner may not see answers exactly as an id that never existed, through every
door: status, body and headers (timing is measured by benchmarks/bench_oracles.py). Each
request is sent twice by the same hostile partner, once at a record another partner holds and
once at a fresh id, and the two answers must be indistinguishable."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.support.network import FHIR, post
from tests.support.records import care_plan

Probe = Callable[[TestClient, str, str, dict[str, Any]], Any]


def _body(doc: dict[str, Any], rid: str) -> bytes:
    return orjson.dumps({**doc, "id": rid})


def _batch(kind: str, method: str, url: str, body: dict[str, Any] | None = None) -> bytes:
    entry: dict[str, Any] = {"request": {"method": method, "url": url}}
    if body is not None:
        entry["resource"] = body
    return orjson.dumps({"resourceType": "Bundle", "type": kind, "entry": [entry]})


PROBES: dict[str, Probe] = {
    "read": lambda c, t, i, d: c.get(f"/fhir/{t}/{i}"),
    "vread v1": lambda c, t, i, d: c.get(f"/fhir/{t}/{i}/_history/1"),
    "vread v2": lambda c, t, i, d: c.get(f"/fhir/{t}/{i}/_history/2"),
    "vread v99": lambda c, t, i, d: c.get(f"/fhir/{t}/{i}/_history/99"),
    "vread bad": lambda c, t, i, d: c.get(f"/fhir/{t}/{i}/_history/x"),
    "history": lambda c, t, i, d: c.get(f"/fhir/{t}/{i}/_history"),
    "history paged": lambda c, t, i, d: c.get(f"/fhir/{t}/{i}/_history?_count=1&_page=2"),
    "update": lambda c, t, i, d: c.put(f"/fhir/{t}/{i}", content=_body(d, i), headers=FHIR),
    "update if-match current": lambda c, t, i, d: c.put(
        f"/fhir/{t}/{i}", content=_body(d, i), headers={**FHIR, "If-Match": 'W/"1"'}
    ),
    "update if-match stale": lambda c, t, i, d: c.put(
        f"/fhir/{t}/{i}", content=_body(d, i), headers={**FHIR, "If-Match": 'W/"7"'}
    ),
    "delete": lambda c, t, i, d: c.delete(f"/fhir/{t}/{i}"),
    "batch read": lambda c, t, i, d: c.post(
        "/fhir", content=_batch("batch", "GET", f"{t}/{i}"), headers=FHIR
    ),
    "batch vread": lambda c, t, i, d: c.post(
        "/fhir", content=_batch("batch", "GET", f"{t}/{i}/_history/1"), headers=FHIR
    ),
    "batch update": lambda c, t, i, d: c.post(
        "/fhir", content=_batch("batch", "PUT", f"{t}/{i}", {**d, "id": i}), headers=FHIR
    ),
    "batch delete": lambda c, t, i, d: c.post(
        "/fhir", content=_batch("batch", "DELETE", f"{t}/{i}"), headers=FHIR
    ),
    "transaction read": lambda c, t, i, d: c.post(
        "/fhir", content=_batch("transaction", "GET", f"{t}/{i}"), headers=FHIR
    ),
    "transaction update": lambda c, t, i, d: c.post(
        "/fhir", content=_batch("transaction", "PUT", f"{t}/{i}", {**d, "id": i}), headers=FHIR
    ),
    "search by id": lambda c, t, i, d: c.get(f"/fhir/{t}?_id={i}"),
}


def _normalised(response: Any, rid: str) -> tuple[int, Any, dict[str, str]]:
    """Status, body and headers with the id asked about (and server-made values: bundle ids,
    timestamps, request ids) replaced, so that only what could tell the two apart is left."""
    text = response.text.replace(rid, "<id>")
    body: Any = orjson.loads(text) if text else None
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        body.pop("id", None)
        body.pop("meta", None)
    headers = {k: v.replace(rid, "<id>") for k, v in response.headers.items()}
    headers.pop("x-request-id", None)
    return response.status_code, body, headers


@pytest.mark.parametrize("door", sorted(PROBES))
@pytest.mark.parametrize("state", ["live", "deleted", "corrected"])
def test_a_hidden_record_answers_exactly_as_an_absent_id(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    door: str,
    state: str,
) -> None:
    hidden = shelter_record["plan"]
    doc = shelter.get(f"/fhir/CarePlan/{hidden}").json()
    if state == "deleted":
        assert shelter.delete(f"/fhir/CarePlan/{hidden}").status_code == 204
    elif state == "corrected":
        corrected = {**doc, "title": "Safety plan (corrected)"}
        url = f"/fhir/CarePlan/{hidden}"
        assert shelter.put(url, content=orjson.dumps(corrected), headers=FHIR).status_code == 200
    attempt = {k: v for k, v in care_plan(shelter_record["patient"]).items() if k != "id"}
    absent = str(uuid.uuid4())
    probe = PROBES[door]
    answer_hidden = _normalised(probe(clinic, "CarePlan", hidden, attempt), hidden)
    answer_absent = _normalised(probe(clinic, "CarePlan", absent, attempt), absent)
    assert answer_hidden == answer_absent
    # and the hidden record is unchanged by whatever the probe tried
    history = shelter.get(f"/fhir/CarePlan/{hidden}/_history").json()
    assert len(history["entry"]) == {"live": 1, "deleted": 2, "corrected": 2}[state]


def test_a_put_to_an_absent_id_creates_nothing_so_ids_cannot_be_squatted(
    clinic: TestClient, shelter: TestClient
) -> None:
    squat = {"resourceType": "Organization", "id": "new-partner", "name": "Not them"}
    answer = clinic.put("/fhir/Organization/new-partner", content=orjson.dumps(squat), headers=FHIR)
    assert answer.status_code == 404
    assert shelter.get("/fhir/Organization/new-partner").status_code == 404
    plan = {**care_plan("p1"), "id": "chosen-id"}
    bundle = _batch("transaction", "PUT", "CarePlan/chosen-id", plan)
    assert clinic.post("/fhir", content=bundle, headers=FHIR).status_code == 404


def test_conditional_create_matching_another_partners_record_creates_its_own(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    identifier = "urn:oid:2.16.840.1.113883.3.9999.1|RSH-000412"
    created = post(
        clinic,
        "/fhir/Patient",
        {"resourceType": "Patient", "identifier": [
            {"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "RSH-000412"}]},
        **{"If-None-Exist": f"identifier={identifier}"},
    )  # fmt: skip
    assert created.status_code == 201
    assert created.json()["id"] != shelter_record["patient"]


def test_an_authenticated_miss_is_audited_like_a_refusal(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    from tests.disclose.test_audit_rest import audit_log

    before = len(audit_log(clinic))
    clinic.get(f"/fhir/CarePlan/{shelter_record['plan']}")
    clinic.get(f"/fhir/CarePlan/{uuid.uuid4()}")
    events = audit_log(clinic)[before:]
    assert [e["outcome"] for e in events] == ["4", "4"]
    assert [e["action"] for e in events] == ["R", "R"]
