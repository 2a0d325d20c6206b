"""A query string on a create is a conditional create (how fhirpy and others ask for one) or a
400: never ignored, so a client retrying a create does not make duplicates."""

from __future__ import annotations

import orjson
from fastapi.testclient import TestClient

from tests.support.network import FHIR
from tests.support.records import MRN, patient


def test_criteria_in_the_query_string_make_a_conditional_create(shelter: TestClient) -> None:
    doc = orjson.dumps(patient(mrn="RSH-7"))
    url = f"/fhir/Patient?identifier={MRN}|RSH-7"
    first = shelter.post(url, content=doc, headers=FHIR)
    again = shelter.post(url, content=doc, headers=FHIR)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert shelter.get("/fhir/Patient?_summary=count").json()["total"] == 1


def test_a_query_string_that_is_not_criteria_or_both_forms_at_once_is_a_400(
    shelter: TestClient,
) -> None:
    doc = orjson.dumps(patient(mrn="RSH-8"))
    assert shelter.post("/fhir/Patient?_count=1", content=doc, headers=FHIR).status_code == 400
    both = shelter.post(
        f"/fhir/Patient?identifier={MRN}|RSH-8",
        content=doc,
        headers={**FHIR, "If-None-Exist": f"identifier={MRN}|RSH-8"},
    )
    assert both.status_code == 400
    assert shelter.post("/fhir/Patient?_format=json", content=doc, headers=FHIR).status_code == 201
    assert shelter.get("/fhir/Patient?_summary=count").json()["total"] == 1
