"""Who finds what by searching, once survivors' Consents are involved: search, ``_include``,
``_revinclude``, paging and Bundles release exactly what a read by id would, decided inside the
store before it counts, so totals count only what may be seen and every page but the last is
full. Each test is one story on the demo network (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.clock import FrozenClock
from gateway.settings import Settings
from gateway.store.sql import SqlStore
from tests.support.network import FHIR, partner_client, post, release_consent
from tests.support.records import HMIS, MRN, care_plan, patient, referral

ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
RTYPES = "http://hl7.org/fhir/resource-types"


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def next_url(bundle: dict[str, Any], relation: str = "next") -> str | None:
    urls = [link["url"] for link in bundle["link"] if link["relation"] == relation]
    return urls[0] if urls else None


def pages(client: TestClient, url: str) -> Iterator[dict[str, Any]]:
    while True:
        page = client.get(url).json()
        yield page
        nxt = next_url(page)
        if nxt is None:
            return
        url = nxt


def put(client: TestClient, url: str, resource: dict[str, Any]) -> Any:
    return client.put(url, content=orjson.dumps(resource), headers=FHIR)


def revoke(client: TestClient, consent: dict[str, Any]) -> None:
    response = put(client, f"/fhir/Consent/{consent['id']}", {**consent, "status": "inactive"})
    assert response.status_code == 200


@pytest.fixture
def release(shelter: TestClient, shelter_record: dict[str, str]) -> dict[str, Any]:
    """The survivor's written, time-limited release of her record to the clinic, for TREAT."""
    created: dict[str, Any] = post(
        shelter, "/fhir/Consent", release_consent(shelter_record["patient"])
    ).json()
    return created


@pytest.fixture
def legal_aid(settings: Settings, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    with partner_client(
        settings, sql_store, clock, "northside-legal-aid", "legal-aid", purposes=("HLEGAL",)
    ) as c:
        yield c


def test_a_referral_to_the_clinic_is_found_only_once_the_survivor_releases_it(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = "/fhir/ServiceRequest?performer=Organization/harbor-clinic"
    before = clinic.get(url).json()
    assert before["total"] == 0
    assert "entry" not in before
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"]))
    after = clinic.get(url).json()
    assert after["total"] == 1
    assert ids(after) == [shelter_record["referral"]]


def test_totals_count_own_and_released_records_and_every_page_but_the_last_is_full(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    survivor = shelter_record["patient"]
    other = post(shelter, "/fhir/Patient", patient("Okafor", "Amina", mrn="RSH-000413")).json()
    mine = post(clinic, "/fhir/Patient", patient("Nguyen", "Linh", mrn="HCC-1")).json()["id"]
    for n in range(3):
        post(shelter, "/fhir/CarePlan", care_plan(survivor, title=f"Released {n}"))
        post(shelter, "/fhir/CarePlan", care_plan(other["id"], title=f"Withheld {n}"))
        post(clinic, "/fhir/CarePlan", care_plan(mine, title=f"Clinic {n}"))
    sizes, titles = [], []
    for page in pages(clinic, "/fhir/CarePlan?_count=3"):
        assert page["total"] == 7  # 3 of the clinic's, 4 released; 3 withheld are not counted
        sizes.append(len(page["entry"]))
        titles += [e["resource"]["title"] for e in page["entry"]]
    assert sizes == [3, 3, 1]
    assert sorted(titles) == sorted(
        ["Safety plan", *(f"Released {n}" for n in range(3)), *(f"Clinic {n}" for n in range(3))]
    )
    assert clinic.get("/fhir/CarePlan?_summary=count").json()["total"] == 7


def test_paging_backwards_and_in_descending_order_sees_each_released_record_once(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    mine = post(clinic, "/fhir/Patient", patient("Nguyen", "Linh", mrn="HCC-1")).json()["id"]
    for n in range(2):
        post(shelter, "/fhir/CarePlan", care_plan(shelter_record["patient"], title=f"S{n}"))
        post(clinic, "/fhir/CarePlan", care_plan(mine, title=f"C{n}"))
    seen = [
        i
        for page in pages(clinic, "/fhir/CarePlan?_sort=-_lastUpdated&_count=2")
        for i in ids(page)
    ]
    assert len(seen) == len(set(seen)) == 5
    last = list(pages(clinic, "/fhir/CarePlan?_sort=-_lastUpdated&_count=2"))[-1]
    back = clinic.get(next_url(last, "previous") or "").json()
    assert len(back["entry"]) == 2
    assert ids(back) == seen[2:4]


def test_revoking_between_two_pages_empties_the_very_next_page(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    for n in range(3):
        post(shelter, "/fhir/CarePlan", care_plan(shelter_record["patient"], title=f"Plan {n}"))
    first = clinic.get("/fhir/CarePlan?_count=2").json()
    assert first["total"] == 4
    revoke(shelter, release)
    second = clinic.get(next_url(first) or "").json()
    assert second["total"] == 0
    assert "entry" not in second


def test_deleting_the_consent_stops_search_release_at_once(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    assert clinic.get("/fhir/CarePlan").json()["total"] == 1
    assert shelter.delete(f"/fhir/Consent/{release['id']}").status_code == 204
    assert clinic.get("/fhir/CarePlan").json()["total"] == 0


def test_searching_by_her_person_identifier_finds_her_only_with_consent_and_without_her_phone(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    url = f"/fhir/Patient/{shelter_record['patient']}"
    doc = shelter.get(url).json()
    doc["identifier"].append({"system": HMIS, "value": "CoC-88412"})
    put(shelter, url, {**doc, "telecom": [{"system": "phone", "value": "555-0100"}]})
    by_person = f"/fhir/Patient?identifier={HMIS}|CoC-88412"
    assert clinic.get(by_person).json()["total"] == 0
    assert clinic.get("/fhir/Patient?name=alvarez").json()["total"] == 0
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"]))
    for url in (by_person, "/fhir/Patient?identifier=CoC-88412"):
        found = clinic.get(url)
        assert found.json()["total"] == 1, url
        assert ids(found.json()) == [shelter_record["patient"]]
        assert "555-0100" not in found.text
        assert "telecom" not in found.json()["entry"][0]["resource"]


def test_the_shelters_own_record_number_neither_matches_nor_travels_even_under_consent(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    """A shelter's MRN system names the shelter: it would tell the clinic where she stays."""
    for url in (
        f"/fhir/Patient?identifier={MRN}|RSH-000412",
        "/fhir/Patient?identifier=RSH-000412",
    ):
        assert clinic.get(url).json()["total"] == 0, url
    assert clinic.get("/fhir/Patient?identifier:missing=false").json()["total"] == 0
    released = clinic.get(f"/fhir/Patient/{shelter_record['patient']}")
    assert released.status_code == 200
    assert "RSH-000412" not in released.text
    assert MRN not in released.text
    found = clinic.get("/fhir/Patient?name=alvarez")
    assert found.json()["total"] == 1
    assert "RSH-000412" not in found.text
    assert "RSH-000412" in shelter.get(f"/fhir/Patient/{shelter_record['patient']}").text


@pytest.mark.parametrize(
    "consent_args",
    [
        {"start": "2026-01-01", "end": "2026-11-22"},
        {"start": "2026-11-01", "end": "2028-11-01"},
        {"recipient": "Organization/northside-legal-aid"},
        {"purpose": "HLEGAL"},
    ],
    ids=["expired-yesterday", "longer-than-a-year", "another-recipient", "another-purpose"],
)
def test_a_consent_that_does_not_release_to_the_clinic_now_adds_nothing_to_its_searches(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    consent_args: dict[str, str],
) -> None:
    post(shelter, "/fhir/Consent", release_consent(shelter_record["patient"], **consent_args))
    for url in ("/fhir/CarePlan", "/fhir/Patient", "/fhir/Task", "/fhir/ServiceRequest"):
        assert clinic.get(url).json()["total"] == 0, url


def test_include_brings_the_released_patient_without_the_ways_to_reach_her(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    url = f"/fhir/Patient/{shelter_record['patient']}"
    doc = shelter.get(url).json()
    put(shelter, url, {**doc, "telecom": [{"system": "phone", "value": "555-0100"}]})
    response = clinic.get(
        f"/fhir/ServiceRequest?_id={shelter_record['referral']}&_include=ServiceRequest:subject"
    )
    bundle = response.json()
    assert ids(bundle) == [shelter_record["referral"]]
    assert ids(bundle, "include") == [shelter_record["patient"]]
    assert "555-0100" not in response.text


def test_include_never_pulls_in_a_patient_whose_address_the_release_does_not_cover(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    url = f"/fhir/Patient/{shelter_record['patient']}"
    doc = shelter.get(url).json()
    put(shelter, url, {**doc, "address": [{"line": ["12 Elm Street"], "city": "Riverside"}]})
    response = clinic.get(
        f"/fhir/ServiceRequest?_id={shelter_record['referral']}&_include=ServiceRequest:subject"
        "&_include=ServiceRequest:requester"
    )
    assert ids(response.json()) == [shelter_record["referral"]]
    assert ids(response.json(), "include") == []
    assert "12 Elm Street" not in response.text
    assert clinic.get(f"/fhir/Patient?_id={shelter_record['patient']}").json()["total"] == 0


def test_a_release_of_referrals_only_does_not_pull_in_their_tasks_or_the_plan(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> None:
    only_referrals = release_consent(shelter_record["patient"])
    only_referrals["provision"]["class"] = [{"system": RTYPES, "code": "ServiceRequest"}]
    post(shelter, "/fhir/Consent", only_referrals)
    bundle = clinic.get(
        f"/fhir/ServiceRequest?_id={shelter_record['referral']}&_revinclude=Task:focus"
        "&_revinclude=CarePlan:based-on"
    ).json()
    assert ids(bundle) == [shelter_record["referral"]]
    assert ids(bundle, "include") == []
    assert clinic.get("/fhir/Task?_summary=count").json()["total"] == 0


def test_revinclude_pulls_in_the_released_task_for_the_recipient(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    bundle = clinic.get(
        f"/fhir/ServiceRequest?_id={shelter_record['referral']}&_revinclude=Task:focus"
    ).json()
    assert ids(bundle, "include") == [shelter_record["task"]]


def test_a_nested_deny_for_eth_keeps_the_substance_use_referral_out_of_results_and_totals(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, shelter: TestClient
) -> None:
    with partner_client(settings, sql_store, clock, "st-marys-hospital", "hospital") as hospital:
        survivor = post(hospital, "/fhir/Patient", patient(mrn="SMH-12")).json()["id"]
        sud = referral(survivor)
        sud["reasonCode"] = [
            {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F11.20"}]}
        ]
        plain = post(hospital, "/fhir/ServiceRequest", referral(survivor)).json()["id"]
        labelled = post(hospital, "/fhir/ServiceRequest", sud).json()
        assert "ETH" in {c["code"] for c in labelled["meta"]["security"]}
        # The hospital releases its own referrals, except what carries ETH.
        release = release_consent(survivor)
        release["provision"]["provision"] = [
            {"type": "deny", "securityLabel": [{"system": ACTCODE, "code": "ETH"}]}
        ]
        del release["provision"]["period"]  # hospital data: no VAWA time limit needed
        assert post(hospital, "/fhir/Consent", release).status_code == 201
    with partner_client(settings, sql_store, clock, "harbor-clinic", "clinic") as clinic:
        found = clinic.get(f"/fhir/ServiceRequest?patient=Patient/{survivor}").json()
        assert found["total"] == 1
        assert ids(found) == [plain]
        probe = clinic.get(f"/fhir/ServiceRequest?_security={ACTCODE}|ETH").json()
        assert probe["total"] == 0


def test_legal_aid_searching_for_mental_health_notes_finds_none_without_a_psy_provision(
    shelter: TestClient, legal_aid: TestClient, shelter_record: dict[str, str]
) -> None:
    psy = care_plan(shelter_record["patient"], title="Counselling notes")
    psy["meta"] = {"security": [{"system": ACTCODE, "code": "PSY"}]}
    post(shelter, "/fhir/CarePlan", psy)
    post(
        shelter,
        "/fhir/Consent",
        release_consent(
            shelter_record["patient"],
            recipient="Organization/northside-legal-aid",
            purpose="HLEGAL",
        ),
    )
    assert legal_aid.get(f"/fhir/CarePlan?_security={ACTCODE}|PSY").json()["total"] == 0
    plans = legal_aid.get("/fhir/CarePlan").json()
    assert ids(plans) == [shelter_record["plan"]]
    assert "Counselling notes" not in orjson.dumps(plans).decode()


def test_break_glass_search_reaches_one_named_survivor_never_a_population(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock
) -> None:
    with partner_client(settings, sql_store, clock, "harbor-clinic", "clinic") as clinic:
        survivor = post(clinic, "/fhir/Patient", patient(mrn="HCC-20", hmis="CoC-20")).json()["id"]
        plan = post(clinic, "/fhir/CarePlan", care_plan(survivor)).json()["id"]
        other = post(clinic, "/fhir/Patient", patient("Okafor", "Amina", mrn="HCC-21")).json()
        post(clinic, "/fhir/CarePlan", care_plan(other["id"]))
    with partner_client(
        settings, sql_store, clock, "st-marys-hospital", "hospital", purposes=("ETREAT",)
    ) as emergency:
        named = emergency.get(f"/fhir/CarePlan?patient=Patient/{survivor}").json()
        assert ids(named) == [plan]
        assert named["total"] == 1
        found = emergency.get(f"/fhir/Patient?identifier={HMIS}|CoC-20").json()
        assert ids(found) == [survivor]
        assert emergency.get("/fhir/CarePlan").json()["total"] == 0
        assert emergency.get("/fhir/Patient?name=alvarez").json()["total"] == 0
    with partner_client(settings, sql_store, clock, "st-marys-hospital", "hospital") as routine:
        assert routine.get(f"/fhir/CarePlan?patient=Patient/{survivor}").json()["total"] == 0


def test_break_glass_search_never_reaches_shelter_data(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, shelter_record: dict[str, str]
) -> None:
    with partner_client(
        settings, sql_store, clock, "st-marys-hospital", "hospital", purposes=("ETREAT",)
    ) as emergency:
        survivor = shelter_record["patient"]
        assert emergency.get(f"/fhir/CarePlan?patient=Patient/{survivor}").json()["total"] == 0
        assert emergency.get(f"/fhir/Patient?_id={survivor}").json()["total"] == 0


def test_a_batch_search_releases_exactly_what_the_rest_search_does(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    url = "ServiceRequest?performer=Organization/harbor-clinic&_include=ServiceRequest:subject"
    direct = clinic.get(f"/fhir/{url}").json()
    batch = post(
        clinic,
        "/fhir",
        {"resourceType": "Bundle", "type": "batch",
         "entry": [{"request": {"method": "GET", "url": url}}]},
    ).json()  # fmt: skip
    inner = batch["entry"][0]["resource"]
    assert inner["total"] == direct["total"] == 1
    assert ids(inner) == ids(direct) == [shelter_record["referral"]]
    assert ids(inner, "include") == ids(direct, "include") == [shelter_record["patient"]]


def test_a_transaction_reads_under_consent_like_the_rest_api(
    shelter: TestClient,
    clinic: TestClient,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    bundle = post(
        clinic,
        "/fhir",
        {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "GET", "url": "CarePlan?_count=10"}},
            {"request": {"method": "GET", "url": f"CarePlan/{shelter_record['plan']}"}}]},
    )  # fmt: skip
    assert bundle.status_code == 200
    entries = bundle.json()["entry"]
    assert entries[0]["resource"]["total"] == 1
    assert entries[1]["resource"]["id"] == shelter_record["plan"]


def test_conditional_create_matches_only_what_the_clinic_holds_even_under_consent(
    clinic: TestClient, shelter_record: dict[str, str], release: dict[str, Any]
) -> None:
    criteria = {"If-None-Exist": f"identifier={MRN}|RSH-000412"}
    response = post(clinic, "/fhir/Patient", patient(mrn="RSH-000412"), **criteria)
    assert response.status_code == 201
    assert response.json()["id"] != shelter_record["patient"]


def test_a_scope_limited_token_sees_released_records_only_of_the_types_it_was_granted(
    settings: Settings,
    sql_store: SqlStore,
    clock: FrozenClock,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    with partner_client(
        settings, sql_store, clock, "harbor-clinic", "clinic", ("system/ServiceRequest.rs",)
    ) as narrow:
        bundle = narrow.get(
            f"/fhir/ServiceRequest?_id={shelter_record['referral']}&_include=ServiceRequest:subject"
        ).json()
        assert ids(bundle) == [shelter_record["referral"]]
        assert ids(bundle, "include") == []
        assert narrow.get("/fhir/CarePlan").status_code == 403


def test_the_shelters_own_searches_are_unchanged_by_what_it_released(
    shelter: TestClient, shelter_record: dict[str, str], release: dict[str, Any]
) -> None:
    plans = shelter.get("/fhir/CarePlan").json()
    assert ids(plans) == [shelter_record["plan"]]
    assert "Safety plan" in orjson.dumps(plans).decode()


# -- one survivor, several partners' records ------------------------------------------------------


def links(resource: dict[str, Any]) -> list[str]:
    return [link["other"]["reference"] for link in resource.get("link", [])]


@pytest.fixture
def both_records(
    shelter: TestClient, clinic: TestClient, shelter_record: dict[str, str]
) -> dict[str, str]:
    """The shelter's survivor and the clinic's own record of her, both with her HMIS id."""
    url = f"/fhir/Patient/{shelter_record['patient']}"
    doc = shelter.get(url).json()
    doc["identifier"].append({"system": HMIS, "value": "CoC-88412"})
    put(shelter, url, doc)
    own = post(clinic, "/fhir/Patient", patient(mrn="HCC-77", hmis="CoC-88412")).json()
    return {**shelter_record, "clinic_patient": own["id"]}


def test_the_clinics_record_of_her_is_linked_to_the_shelters_only_while_she_consents(
    shelter: TestClient, clinic: TestClient, both_records: dict[str, str]
) -> None:
    mine = f"/fhir/Patient/{both_records['clinic_patient']}"
    assert links(clinic.get(mine).json()) == []
    release = post(shelter, "/fhir/Consent", release_consent(both_records["patient"])).json()
    linked = clinic.get(mine).json()
    assert links(linked) == [f"Patient/{both_records['patient']}"]
    assert linked["link"][0]["type"] == "seealso"
    assert "HCC-77" in orjson.dumps(linked).decode()  # its own identifiers, untouched
    revoke(shelter, release)
    assert links(clinic.get(mine).json()) == []


def test_a_partner_is_never_linked_to_a_record_it_may_not_see(
    shelter: TestClient,
    clinic: TestClient,
    legal_aid: TestClient,
    both_records: dict[str, str],
) -> None:
    post(shelter, "/fhir/Consent", release_consent(both_records["patient"]))
    # The clinic's record is not released to the shelter: the shelter's view links nothing.
    assert links(shelter.get(f"/fhir/Patient/{both_records['patient']}").json()) == []
    own = post(legal_aid, "/fhir/Patient", patient(mrn="NLA-3", hmis="CoC-88412")).json()
    assert links(legal_aid.get(f"/fhir/Patient/{own['id']}").json()) == []
    assert legal_aid.get(f"/fhir/Patient?identifier={HMIS}|CoC-88412").json()["total"] == 1


def test_searching_her_person_identifier_finds_each_visible_record_linked_to_the_others(
    shelter: TestClient, clinic: TestClient, both_records: dict[str, str]
) -> None:
    post(shelter, "/fhir/Consent", release_consent(both_records["patient"]))
    found = clinic.get(f"/fhir/Patient?identifier={HMIS}|CoC-88412").json()
    assert found["total"] == 2
    by_id = {e["resource"]["id"]: e["resource"] for e in found["entry"]}
    shelters, clinics = both_records["patient"], both_records["clinic_patient"]
    assert links(by_id[clinics]) == [f"Patient/{shelters}"]
    assert links(by_id[shelters]) == [f"Patient/{clinics}"]
    assert "RSH-000412" not in orjson.dumps(found).decode()


def test_records_indexed_before_the_consent_facts_are_found_once_the_index_is_rebuilt(
    sql_store: SqlStore,
    clinic: TestClient,
    shelter_record: dict[str, str],
    release: dict[str, Any],
) -> None:
    """A database written before consent decided from index facts has none: its records stay
    hidden (fail closed) from search and from reads by id (whose Consent probe reads the same
    rows) until ``gateway db reindex``."""
    from sqlalchemy import text

    with sql_store.engine.begin() as conn:
        conn.execute(text("DELETE FROM search_index WHERE param LIKE '\\_consent-%' ESCAPE '\\'"))
    assert clinic.get("/fhir/CarePlan").json()["total"] == 0
    assert clinic.get(f"/fhir/CarePlan/{shelter_record['plan']}").status_code == 404
    assert sum(sql_store.reindex(batch_size=2)) == sql_store.count_live()
    assert ids(clinic.get("/fhir/CarePlan").json()) == [shelter_record["plan"]]
    assert clinic.get(f"/fhir/CarePlan/{shelter_record['plan']}").status_code == 200


def test_the_contributors_own_links_do_not_travel_only_links_the_recipient_may_follow(
    shelter: TestClient, clinic: TestClient, both_records: dict[str, str]
) -> None:
    url = f"/fhir/Patient/{both_records['patient']}"
    doc = shelter.get(url).json()
    hidden = "Patient/8f7e2a10-5b1c-4c2e-9d3a-1e2f3a4b5c6d"  # another record of her, elsewhere
    put(shelter, url, {**doc, "link": [{"other": {"reference": hidden}, "type": "seealso"}]})
    post(shelter, "/fhir/Consent", release_consent(both_records["patient"]))
    seen = clinic.get(url)
    assert links(seen.json()) == [f"Patient/{both_records['clinic_patient']}"]
    assert hidden not in seen.text
    assert hidden in shelter.get(url).text
