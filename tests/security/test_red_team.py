"""Red-team findings against the contract (docs/consent.md), as a hostile partner holding valid
keys and every scope would try them. A finding that still stands is a strict xfail (the file
passes while the bug stands; fixing it turns the xfail into a failure that says "remove the
mark"). The passing tests cover doors the other security tests do not reach.

Findings (by severity):
1. ``_include`` / ``_revinclude`` follow a reference that redaction removes (an element with an
   inline LOCIS label): the recipient learns the survivor's safe-house Organization.
2. Break-glass (ETREAT) reaches a whole population through ``_revinclude`` (or ``_include``):
   included rows are decided without the "one survivor at a time" pin.
3. ``:missing=true`` on an element redaction removes misses a record whose shown copy lacks it:
   the recipient learns the hidden element is there.
4. Label dodging: the SNOMED CT edition URI as ``system``, or a SNOMED expression carrying its
   term, gets no sensitivity label.
5. A conditional create that matches is answered 200 to a token without the ``c`` scope.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.clock import FrozenClock
from gateway.consent.labels import labels_for, load_label_tables
from gateway.settings import Settings
from gateway.store.sql import SqlStore
from gateway.vocabulary.security import INLINE_LABEL
from tests.support.network import FHIR, partner_client, post, release_consent
from tests.support.records import care_plan, patient, referral
from tests.support.valid import valid

ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOCIS = {"url": INLINE_LABEL, "valueCoding": {"system": ACTCODE, "code": "LOCIS"}}
SAFEHOUSE = "safehouse-7"
TABLES = load_label_tables(Path(__file__).resolve().parents[2] / "consent_policies")


def _directory(store: SqlStore, org_id: str) -> None:
    """A directory Organization the gateway's administrator wrote (no contributor)."""
    doc = {"resourceType": "Organization", "id": org_id, "active": True, "name": org_id}
    store.create(valid(doc, None), resource_id=org_id)


def _entries(bundle: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (e["search"]["mode"], e["resource"]["resourceType"], e["resource"]["id"])
        for e in bundle.get("entry", [])
    ]


@pytest.fixture
def emergency(settings: Settings, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    """The hospital's emergency department, asking under ETREAT (break-glass)."""
    with partner_client(
        settings, sql_store, clock, "st-marys-hospital", "hospital", purposes=("ETREAT",)
    ) as c:
        yield c


# -- 1. includes follow references that redaction removes ------------------------------------


@pytest.fixture
def placed_referral(shelter: TestClient, sql_store: SqlStore) -> dict[str, str]:
    """The shelter refers the survivor to its safe house; the performer carries an inline LOCIS
    label, so a recipient's copy has no performer. The survivor's release names the clinic."""
    _directory(sql_store, SAFEHOUSE)
    survivor = post(shelter, "/fhir/Patient", patient()).json()["id"]
    assert post(shelter, "/fhir/Consent", release_consent(survivor)).status_code == 201
    doc = referral(survivor)
    doc["performer"] = [{"reference": f"Organization/{SAFEHOUSE}", "extension": [LOCIS]}]
    made = post(shelter, "/fhir/ServiceRequest", doc)
    assert made.status_code == 201
    return {"patient": survivor, "referral": made.json()["id"]}


def test_the_recipient_copy_of_the_referral_has_no_performer(
    clinic: TestClient, placed_referral: dict[str, str]
) -> None:
    shown = clinic.get(f"/fhir/ServiceRequest/{placed_referral['referral']}")
    assert shown.status_code == 200
    assert "performer" not in shown.json()
    assert SAFEHOUSE not in shown.text
    # and a search on the removed value misses (what the existing _shown_matches guards)
    found = clinic.get(f"/fhir/ServiceRequest?performer=Organization/{SAFEHOUSE}").json()
    assert found["total"] == 0


def test_include_does_not_follow_a_reference_that_redaction_removes(
    clinic: TestClient, placed_referral: dict[str, str]
) -> None:
    rid = placed_referral["referral"]
    url = f"/fhir/ServiceRequest?_id={rid}&_include=ServiceRequest:performer"
    found = clinic.get(url).json()
    assert ("include", "Organization", SAFEHOUSE) not in _entries(found)


def test_revinclude_does_not_match_a_reference_that_redaction_removes(
    clinic: TestClient, placed_referral: dict[str, str]
) -> None:
    url = f"/fhir/Organization?_id={SAFEHOUSE}&_revinclude=ServiceRequest:performer"
    found = clinic.get(url).json()
    assert ("include", "ServiceRequest", placed_referral["referral"]) not in _entries(found)


def test_missing_never_answers_about_another_partners_record(
    clinic: TestClient, placed_referral: dict[str, str]
) -> None:
    # Whether an element is there is itself withheld when redaction removes it: a :missing
    # search matches only the requester's own records, so neither form tells a hidden
    # performer from none.
    rid = placed_referral["referral"]
    missing = clinic.get(f"/fhir/ServiceRequest?_id={rid}&performer:missing=true").json()
    present = clinic.get(f"/fhir/ServiceRequest?_id={rid}&performer:missing=false").json()
    assert (missing["total"], present["total"]) == (0, 0)
    assert clinic.get(f"/fhir/ServiceRequest?_id={rid}").json()["total"] == 1


# -- 2. break-glass reaches a population through _revinclude ---------------------------------


@pytest.fixture
def clinic_population(clinic: TestClient, sql_store: SqlStore) -> list[str]:
    """Three of the clinic's patients (no Consent), managed by its directory Organization, each
    with a plan."""
    _directory(sql_store, "harbor-clinic")
    ids = []
    for n in range(3):
        doc = patient(f"Fam{n}", "Ana", mrn=f"HC-{n}")
        doc["managingOrganization"] = {"reference": "Organization/harbor-clinic"}
        pid = post(clinic, "/fhir/Patient", doc).json()["id"]
        assert post(clinic, "/fhir/CarePlan", care_plan(pid)).status_code == 201
        ids.append(pid)
    return ids


def test_break_glass_population_search_finds_nothing(
    emergency: TestClient, clinic_population: list[str]
) -> None:
    """The documented rule holds for the matches themselves."""
    assert emergency.get("/fhir/Patient?gender=female").json()["total"] == 0
    assert emergency.get(f"/fhir/Patient?_id={','.join(clinic_population)}").json()["total"] == 0
    assert emergency.get(f"/fhir/Patient?_id={clinic_population[0]}").json()["total"] == 1


def test_break_glass_does_not_reach_a_population_through_revinclude(
    emergency: TestClient, clinic_population: list[str]
) -> None:
    url = "/fhir/Organization?_id=harbor-clinic&_revinclude=Patient:organization"
    included = [e for e in _entries(emergency.get(url).json()) if e[0] == "include"]
    assert included == []


def test_break_glass_does_not_reach_a_population_through_include(
    emergency: TestClient, clinic_population: list[str]
) -> None:
    for pid in clinic_population:
        made = post(emergency, "/fhir/ServiceRequest", referral(pid, performer="Organization/x"))
        assert made.status_code == 201
    found = emergency.get("/fhir/ServiceRequest?_include=ServiceRequest:subject").json()
    assert found["total"] == 3  # its own referrals
    assert [e for e in _entries(found) if e[0] == "include"] == []


# -- 4. label dodging ---------------------------------------------------------------------------


def _coded(system: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": system, "code": code}]},
    }


@pytest.mark.parametrize(
    ("system", "code"),
    [
        pytest.param("http://snomed.info/sct/", "7200002", id="trailing-slash"),
        pytest.param("urn:oid:2.16.840.1.113883.6.96", "7200002", id="snomed-oid"),
        pytest.param("http://hl7.org/fhir/sid/icd-10-cm", "f10-20", id="icd-lower-dash"),
    ],
)
def test_known_aliases_still_label(system: str, code: str) -> None:
    labels = {c["code"] for c in labels_for(_coded(system, code), contributor_kind="clinic",
                                            tables=TABLES)}  # fmt: skip
    assert "ETH" in labels


@pytest.mark.parametrize(
    ("system", "code"),
    [
        pytest.param("http://snomed.info/sct/731000124108", "7200002", id="snomed-us-edition"),
        pytest.param("http://snomed.info/sct", "7200002 |Alcoholism|", id="snomed-with-term"),
        pytest.param("http://snomed.info/sct", "7200002\u200b", id="snomed-zero-width"),
        pytest.param("http://hl7.org/fhir/sid/icd-10-cm", "\uff26\uff11\uff10.20", id="fullwidth"),
    ],
)
def test_snomed_spellings_still_label(system: str, code: str) -> None:
    labels = {c["code"] for c in labels_for(_coded(system, code), contributor_kind="clinic",
                                            tables=TABLES)}  # fmt: skip
    assert "ETH" in labels


# -- what held (coverage the other security tests lack) --------------------------------------


def test_a_consent_for_ones_own_patient_naming_anothers_record_releases_nothing(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    mine = post(clinic, "/fhir/Patient", patient("Otra", "Ana", mrn="HC-9")).json()["id"]
    doc = release_consent(mine)
    doc["provision"]["data"] = [
        {"meaning": "instance", "reference": {"reference": f"CarePlan/{shelter_record['plan']}"}},
        {"meaning": "related", "reference": {"reference": f"Patient/{shelter_record['patient']}"}},
    ]
    assert post(clinic, "/fhir/Consent", doc).status_code == 201
    plan = shelter_record["plan"]
    assert clinic.get(f"/fhir/CarePlan/{plan}").status_code == 404
    assert clinic.get(f"/fhir/CarePlan?_id={plan}").json()["total"] == 0
    assert clinic.get(f"/fhir/Patient/{shelter_record['patient']}").status_code == 404


def test_includes_through_ones_own_records_pull_in_nothing_hidden(
    clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    survivor = shelter_record["patient"]
    assert post(clinic, "/fhir/CarePlan", care_plan(survivor)).status_code == 201
    found = clinic.get("/fhir/CarePlan?_include=CarePlan:subject&_include=CarePlan:patient").json()
    assert [e for e in _entries(found) if e[0] == "include"] == []
    found = clinic.get(f"/fhir/Patient?_id={survivor}&_revinclude=CarePlan:subject").json()
    assert _entries(found) == []
    assert found["total"] == 0
    counted = clinic.get(f"/fhir/CarePlan?subject=Patient/{survivor}&_summary=count").json()
    assert counted["total"] == 1  # its own plan only


def _normal(response: Any, rid: str) -> tuple[int, Any, dict[str, str]]:
    text = response.text.replace(rid, "<id>")
    body: Any = orjson.loads(text) if text else None
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        body.pop("id", None)
        body.pop("meta", None)
        body.pop("timestamp", None)
    headers = {k: v.replace(rid, "<id>") for k, v in response.headers.items()}
    headers.pop("x-request-id", None)
    return response.status_code, body, headers


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _tx(method: str, url: str) -> bytes:
    entry = {"request": {"method": method, "url": url}}
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry]})


DOORS: dict[str, Callable[[TestClient, str], httpx.Response]] = {
    "post _search _id": lambda c, i: c.post("/fhir/CarePlan/_search", content=f"_id={i}",
                                            headers=FORM),
    "post _search revinclude": lambda c, i: c.post(
        "/fhir/CarePlan/_search", content=f"_id={i}&_include=CarePlan:subject", headers=FORM),
    "transaction delete": lambda c, i: c.post("/fhir", content=_tx("DELETE", f"CarePlan/{i}"),
                                              headers=FHIR),
    "transaction history": lambda c, i: c.post(
        "/fhir", content=_tx("GET", f"CarePlan/{i}/_history"), headers=FHIR),
    "history since": lambda c, i: c.get(f"/fhir/CarePlan/{i}/_history?_since=2020-01-01T00:00:00Z"),
    "explain by a partner": lambda c, i: c.get(
        f"/fhir/Consent/$explain?partner=harbor-clinic&resource=CarePlan/{i}"),
    "accounting by a partner": lambda c, i: c.get(f"/fhir/Patient/{i}/$accounting-of-disclosures"),
    "consent naming it": lambda c, i: post(c, "/fhir/Consent", release_consent(i)),
    "search _id among absent ids": lambda c, i: c.get(
        f"/fhir/CarePlan?_id={i},{uuid.UUID(int=1)},{uuid.UUID(int=2)}&_total=accurate"),
    "search subject:missing": lambda c, i: c.get(f"/fhir/CarePlan?_id={i}&subject:missing=false"),
}  # fmt: skip


@pytest.mark.parametrize("door", sorted(DOORS))
def test_more_doors_answer_hidden_as_absent(
    clinic: TestClient, shelter_record: dict[str, str], door: str
) -> None:
    hidden = shelter_record["patient" if "accounting" in door or "consent" in door else "plan"]
    absent = str(uuid.uuid4())
    probe = DOORS[door]
    assert _normal(probe(clinic, hidden), hidden) == _normal(probe(clinic, absent), absent)


def test_conditional_create_on_a_hidden_id_creates_like_on_an_absent_one(
    clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    doc = orjson.dumps(care_plan(shelter_record["patient"]))
    for rid in (shelter_record["plan"], str(uuid.uuid4())):
        by_query = clinic.post(f"/fhir/CarePlan?_id={rid}", content=doc, headers=FHIR)
        by_header = clinic.post(
            "/fhir/CarePlan", content=doc, headers={**FHIR, "If-None-Exist": f"_id={rid}"}
        )
        assert by_query.status_code == by_header.status_code == 201
        assert rid not in by_query.text + by_header.text


# -- 5. scopes ----------------------------------------------------------------------------------


def test_a_post_without_the_create_scope_is_refused_even_when_the_condition_matches(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, clinic: TestClient
) -> None:
    doc = {**care_plan("p1"), "identifier": [{"system": "urn:x", "value": "A1"}]}
    assert post(clinic, "/fhir/CarePlan", doc).status_code == 201
    with partner_client(
        settings, sql_store, clock, "harbor-clinic", "clinic", scopes=("system/*.rs",)
    ) as reader:
        answer = post(reader, "/fhir/CarePlan", doc, **{"If-None-Exist": "identifier=urn:x|A1"})
        assert answer.status_code == 403
