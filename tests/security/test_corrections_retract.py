"""Older versions follow the newest: once the contributor corrects a record so that it is no
longer released (here: a substance-use diagnosis, ETH, that the release does not list), no
version of it is released any more, through read, vread, history or search."""

from __future__ import annotations

import orjson
from fastapi.testclient import TestClient

from tests.support.network import FHIR, post, release_consent

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def test_a_correction_retracts_every_older_version(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    assert (
        post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"])).status_code
        == 201
    )
    url = f"/fhir/ServiceRequest/{shelter_record['referral']}"
    first = clinic.get(url)
    assert first.status_code == 200
    assert clinic.get(f"{url}/_history/1").status_code == 200
    corrected = shelter.get(url).json()
    corrected["reasonCode"] = [{"coding": [{"system": ICD10CM, "code": "F11.20"}]}]
    assert shelter.put(url, content=orjson.dumps(corrected), headers=FHIR).status_code == 200
    assert clinic.get(url).status_code == 404
    assert clinic.get(f"{url}/_history/1").status_code == 404
    assert clinic.get(f"{url}/_history/2").status_code == 404
    assert clinic.get(f"{url}/_history").status_code == 404
    found = clinic.get(f"/fhir/ServiceRequest?patient={shelter_record['patient']}").json()
    assert found["total"] == 0
    # the shelter itself still sees every version
    assert shelter.get(f"{url}/_history/1").status_code == 200


def test_an_older_version_that_was_never_released_stays_hidden_after_a_correction(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"/fhir/ServiceRequest/{shelter_record['referral']}"
    labelled = shelter.get(url).json()
    labelled["reasonCode"] = [{"coding": [{"system": ICD10CM, "code": "F11.20"}]}]
    assert shelter.put(url, content=orjson.dumps(labelled), headers=FHIR).status_code == 200
    cleaned = shelter.get(url).json()
    del cleaned["reasonCode"]
    del cleaned["meta"]  # the labels went with the code: the writer keeps none of its own
    assert shelter.put(url, content=orjson.dumps(cleaned), headers=FHIR).status_code == 200
    assert (
        post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"])).status_code
        == 201
    )
    assert clinic.get(url).status_code == 200  # the newest is released
    assert clinic.get(f"{url}/_history/1").status_code == 200
    assert clinic.get(f"{url}/_history/2").status_code == 404  # the ETH version is not
    versions = clinic.get(f"{url}/_history").json()["entry"]
    assert [v["resource"]["meta"]["versionId"] for v in versions] == ["3", "1"]
