"""The contract every store keeps: in-memory, SQLite and PostgreSQL give the same answers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest

from gateway.clock import FrozenClock
from gateway.errors import Conflict, Gone, NotFound, PreconditionFailed
from gateway.store.port import Cursor, ResourceStore, StoredResource, Visibility
from gateway.store.query import parse_search
from tests.support.records import care_plan, organization, patient, referral, task
from tests.support.valid import valid, valid_all


def body(stored: StoredResource) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(stored.body)
    return data


def ids(page: object) -> list[str]:
    return [r.id for r in page.matches]  # type: ignore[attr-defined]


def search(store: ResourceStore, resource_type: str, query: str):  # type: ignore[no-untyped-def]
    items = [tuple(part.split("=", 1)) for part in query.split("&") if part]
    return store.search(parse_search(resource_type, items))  # type: ignore[arg-type]


# -- versions ------------------------------------------------------------------------------------


def test_create_assigns_id_version_and_last_updated(any_store: ResourceStore) -> None:
    stored = any_store.create(valid(patient()))
    doc = body(stored)
    assert doc["id"] == stored.id
    assert doc["meta"]["versionId"] == "1"
    assert doc["meta"]["lastUpdated"].endswith("Z")
    assert doc["name"][0]["family"] == "Álvarez"


def test_read_returns_the_bytes_that_were_stored(any_store: ResourceStore) -> None:
    stored = any_store.create(valid(patient()))
    assert any_store.read("Patient", stored.id).body == stored.body


def test_reading_an_unknown_id_is_not_found(any_store: ResourceStore) -> None:
    with pytest.raises(NotFound):
        any_store.read("Patient", "no-such-survivor")


def test_update_writes_a_new_version_and_keeps_the_old_one(any_store: ResourceStore) -> None:
    first = any_store.create(valid(patient()))
    changed = {**body(first), "gender": "other"}
    second, created = any_store.update("Patient", first.id, valid(changed), if_match=1)
    assert not created
    assert second.version_id == 2
    assert body(any_store.read("Patient", first.id))["gender"] == "other"
    assert body(any_store.vread("Patient", first.id, 1))["gender"] == "female"


def test_update_with_a_stale_if_match_is_refused(any_store: ResourceStore) -> None:
    first = any_store.create(valid(patient()))
    any_store.update("Patient", first.id, valid(body(first)), if_match=1)
    with pytest.raises(PreconditionFailed):
        any_store.update("Patient", first.id, valid(body(first)), if_match=1)
    assert any_store.read("Patient", first.id).version_id == 2


def test_update_of_an_absent_resource_creates_it_under_that_id(any_store: ResourceStore) -> None:
    stored, created = any_store.update(
        "Organization",
        "harbor-clinic",
        valid(organization("harbor-clinic", "Harbor")),
        if_match=None,
    )
    assert created
    assert stored.id == "harbor-clinic"
    assert stored.version_id == 1


def test_if_match_on_an_absent_resource_is_a_failed_precondition(any_store: ResourceStore) -> None:
    with pytest.raises(PreconditionFailed):
        any_store.update(
            "Organization",
            "harbor-clinic",
            valid(organization("harbor-clinic", "Harbor")),
            if_match=3,
        )


def test_delete_leaves_history_and_makes_reads_gone(any_store: ResourceStore) -> None:
    stored = any_store.create(valid(patient()))
    marker = any_store.delete("Patient", stored.id)
    assert marker is not None
    assert marker.deleted
    assert marker.version_id == 2
    with pytest.raises(Gone):
        any_store.read("Patient", stored.id)
    assert any_store.vread("Patient", stored.id, 1).body == stored.body
    with pytest.raises(Gone):
        any_store.vread("Patient", stored.id, 2)
    assert any_store.delete("Patient", stored.id) is None


def test_deleted_resources_leave_search(any_store: ResourceStore) -> None:
    stored = any_store.create(valid(patient()))
    any_store.delete("Patient", stored.id)
    page = search(any_store, "Patient", "family=alvarez")
    assert page.total == 0
    assert page.matches == []


def test_update_after_delete_revives_the_resource(any_store: ResourceStore) -> None:
    stored = any_store.create(valid(patient()))
    any_store.delete("Patient", stored.id)
    revived, created = any_store.update("Patient", stored.id, valid(patient()), if_match=None)
    assert created
    assert revived.version_id == 3
    assert ids(search(any_store, "Patient", "family=alvarez")) == [stored.id]


def test_history_is_newest_first_and_pages(any_store: ResourceStore) -> None:
    stored = any_store.create(valid(patient()))
    for gender in ("other", "unknown", "female"):
        any_store.update(
            "Patient", stored.id, valid({**patient(), "gender": gender}), if_match=None
        )
    page = any_store.history("Patient", stored.id, count=3)
    assert [v.version_id for v in page.versions] == [4, 3, 2]
    assert page.next_before == 2
    rest = any_store.history("Patient", stored.id, count=3, before_version=page.next_before)
    assert [v.version_id for v in rest.versions] == [1]
    assert rest.next_before is None


def test_history_since_keeps_only_later_versions(
    any_store: ResourceStore, clock: FrozenClock
) -> None:
    stored = any_store.create(valid(patient()))
    clock.advance(timedelta(hours=1))
    cut = clock.now()
    any_store.update("Patient", stored.id, valid(patient()), if_match=None)
    page = any_store.history("Patient", stored.id, count=10, since=cut)
    assert [v.version_id for v in page.versions] == [2]


def test_history_of_an_unknown_resource_is_not_found(any_store: ResourceStore) -> None:
    with pytest.raises(NotFound):
        any_store.history("Patient", "nobody", count=10)


def test_a_failed_transaction_writes_nothing(any_store: ResourceStore) -> None:
    survivor = any_store.create(valid(patient()))

    def plan_then_stale_update() -> None:
        with any_store.transaction() as tx:
            tx.create(valid(care_plan(survivor.id)))
            tx.update("Patient", survivor.id, valid(patient()), if_match=7)

    with pytest.raises(PreconditionFailed):
        plan_then_stale_update()
    assert search(any_store, "CarePlan", "").total == 0
    assert any_store.read("Patient", survivor.id).version_id == 1


def test_write_many_creates_and_updates_in_the_callers_order(any_store: ResourceStore) -> None:
    existing = any_store.create(valid(patient()))
    written = any_store.write_many(
        valid_all(
            [
                patient("Nguyen", "Linh", mrn="RSH-1"),
                patient("Okafor", "Amina", mrn="RSH-2"),
                {**patient(), "id": existing.id, "gender": "other"},
                organization("harbor-clinic", "Harbor Community Clinic"),
            ]
        )
    )
    assert [w.resource_type for w in written] == ["Patient", "Patient", "Patient", "Organization"]
    assert written[2].id == existing.id
    assert written[2].version_id == 2
    assert written[3].id == "harbor-clinic"
    assert ids(search(any_store, "Patient", "family=nguyen")) == [written[0].id]
    assert body(any_store.read("Patient", existing.id))["gender"] == "other"


def test_contributors_names_the_contributor_of_each_head_and_leaves_out_the_absent(
    any_store: ResourceStore,
) -> None:
    shelter = any_store.create(valid(patient("Nguyen", "Linh"), "riverside-shelter"))
    clinic = any_store.create(valid(patient("Okafor", "Amina"), "harbor-clinic"))
    gone = any_store.create(valid(organization("old-org", "Closed"), "harbor-clinic"))
    any_store.delete("Organization", gone.id)
    keys = [
        ("Patient", shelter.id),
        ("Patient", clinic.id),
        ("Organization", gone.id),
        ("Patient", "never-written"),
        ("Organization", shelter.id),  # an id of another type is another record
        ("Patient", shelter.id),  # asked twice: answered once
    ]
    assert any_store.contributors(keys) == {
        ("Patient", shelter.id): "riverside-shelter",
        ("Patient", clinic.id): "harbor-clinic",
        ("Organization", gone.id): "harbor-clinic",  # a deleted record keeps its head
    }
    with any_store.transaction() as tx:
        assert tx.contributors([("Patient", clinic.id)]) == {
            ("Patient", clinic.id): "harbor-clinic"
        }
    assert any_store.contributors([]) == {}


def test_write_many_refuses_the_same_resource_twice(any_store: ResourceStore) -> None:
    org = organization("harbor-clinic", "Harbor")
    with pytest.raises(Conflict):
        any_store.write_many(valid_all([org, org]))


# -- search --------------------------------------------------------------------------------------


@pytest.fixture
def network(any_store: ResourceStore) -> dict[str, str]:
    """Three survivors, plans and referrals across a shelter, a clinic and legal aid."""
    maria = any_store.create(
        valid(patient("Álvarez", "María", mrn="RSH-1", birth_date="1994-03-17"))
    )
    amina = any_store.create(
        valid(patient("Okafor", "Amina", mrn="RSH-2", birth_date="1988-11-02"))
    )
    linh = any_store.create(valid(patient("Nguyen", "Linh", mrn="NLA-7", birth_date="2001-06-30")))
    any_store.update(
        "Organization",
        "harbor-clinic",
        valid(organization("harbor-clinic", "Harbor")),
        if_match=None,
    )
    plan = any_store.create(valid(care_plan(maria.id)))
    any_store.create(valid(care_plan(amina.id, status="completed")))
    ref = any_store.create(valid(referral(maria.id)))
    any_store.create(
        valid(referral(linh.id, performer="Organization/northside-legal-aid", code="1"))
    )
    work = any_store.create(valid(task(ref.id, maria.id)))
    return {
        "maria": maria.id,
        "amina": amina.id,
        "linh": linh.id,
        "plan": plan.id,
        "referral": ref.id,
        "task": work.id,
    }


def test_string_search_is_case_and_accent_insensitive_prefix(
    any_store: ResourceStore, network: dict[str, str]
) -> None:
    assert ids(search(any_store, "Patient", "name=ALVA")) == [network["maria"]]
    assert ids(search(any_store, "Patient", "given=maria")) == [network["maria"]]
    assert ids(search(any_store, "Patient", "family=lvarez")) == []


def test_exact_string_search_matches_the_whole_value_as_written(
    any_store: ResourceStore, network: dict[str, str]
) -> None:
    assert ids(search(any_store, "Patient", "family:exact=Álvarez")) == [network["maria"]]
    assert ids(search(any_store, "Patient", "family:exact=alvarez")) == []


def test_contains_is_refused_because_the_index_keeps_only_blind_prefixes() -> None:
    from gateway.errors import UnknownParameter

    with pytest.raises(UnknownParameter, match=":contains"):
        parse_search("Patient", [("family:contains", "kaf")])


def test_a_string_search_compares_the_first_64_characters(
    any_store: ResourceStore, network: dict[str, str]
) -> None:
    assert ids(search(any_store, "Patient", "family=oka")) == [network["amina"]]
    assert ids(search(any_store, "Patient", "family=okafor" + "x" * 70)) == []
    long_name = "Okafor-" + "b" * 70
    stored = any_store.create(valid(patient(long_name, "Ada")))
    # Beyond 64 characters the index keeps no prefix: the rest of the value is not compared.
    beyond = long_name[:64] + "zzz"
    assert ids(search(any_store, "Patient", f"family={beyond}")) == [stored.id]


def test_a_search_date_finer_than_a_second_compares_to_the_second(
    any_store: ResourceStore, network: dict[str, str]
) -> None:
    # Both stores widen the criterion to its whole second, as the blind index compares.
    query = parse_search("Patient", [("birthdate", "ge2100-01-01T00:00:00.5Z")])
    (criterion,) = query.clauses[0].criteria
    assert criterion.low.endswith("00:00:00.000000")  # type: ignore[union-attr]


def test_token_search_by_system_and_value(
    any_store: ResourceStore, network: dict[str, str]
) -> None:
    system = "urn:oid:2.16.840.1.113883.3.9999.1"
    assert ids(search(any_store, "Patient", f"identifier={system}|RSH-2")) == [network["amina"]]
    assert ids(search(any_store, "Patient", "identifier=RSH-2")) == [network["amina"]]
    assert ids(search(any_store, "Patient", "identifier=urn:other|RSH-2")) == []
    assert ids(search(any_store, "Patient", "identifier=|RSH-2")) == []
    assert len(ids(search(any_store, "Patient", f"identifier={system}|"))) == 3


def test_comma_means_or_and_repeated_parameters_mean_and(
    any_store: ResourceStore, network: dict[str, str]
) -> None:
    either = ids(search(any_store, "Patient", "identifier=RSH-1,NLA-7"))
    assert sorted(either) == sorted([network["maria"], network["linh"]])
    both = ids(search(any_store, "Patient", "identifier=RSH-1,NLA-7&gender=female&family=nguyen"))
    assert both == [network["linh"]]


def test_reference_search_with_and_without_type(
    any_store: ResourceStore, network: dict[str, str]
) -> None:
    maria = network["maria"]
    assert ids(search(any_store, "CarePlan", f"subject=Patient/{maria}")) == [network["plan"]]
    assert ids(search(any_store, "CarePlan", f"patient={maria}")) == [network["plan"]]
    assert ids(search(any_store, "Task", f"focus=ServiceRequest/{network['referral']}")) == [
        network["task"]
    ]
    assert ids(search(any_store, "Task", "owner=Organization/harbor-clinic")) == [network["task"]]
    assert ids(search(any_store, "ServiceRequest", "performer=Organization/harbor-clinic")) == [
        network["referral"]
    ]


def test_date_prefixes_on_birthdate(any_store: ResourceStore, network: dict[str, str]) -> None:
    assert ids(search(any_store, "Patient", "birthdate=1994-03-17")) == [network["maria"]]
    assert ids(search(any_store, "Patient", "birthdate=1994")) == [network["maria"]]
    assert sorted(ids(search(any_store, "Patient", "birthdate=ge1990-01-01"))) == sorted(
        [network["maria"], network["linh"]]
    )
    assert ids(search(any_store, "Patient", "birthdate=lt1990-01-01")) == [network["amina"]]
    assert ids(search(any_store, "Patient", "birthdate=gt2001-06-30")) == []
    assert ids(search(any_store, "Patient", "birthdate=le1988-11-02")) == [network["amina"]]
    assert sorted(ids(search(any_store, "Patient", "birthdate=ne1994-03-17"))) == sorted(
        [network["amina"], network["linh"]]
    )


def test_period_dates_match_by_overlap(any_store: ResourceStore, network: dict[str, str]) -> None:
    plans = ids(search(any_store, "CarePlan", "date=ge2027-01-01"))
    assert network["plan"] in plans
    assert ids(search(any_store, "CarePlan", "date=gt2028-01-01")) == []


def test_missing_modifier(any_store: ResourceStore, network: dict[str, str]) -> None:
    any_store.create(valid({"resourceType": "Patient", "name": [{"family": "Doe-Unknown"}]}))
    missing = search(any_store, "Patient", "birthdate:missing=true")
    assert [body(r)["name"][0]["family"] for r in missing.matches] == ["Doe-Unknown"]
    assert search(any_store, "Patient", "birthdate:missing=false").total == 3


def test_status_and_code_tokens(any_store: ResourceStore, network: dict[str, str]) -> None:
    assert ids(search(any_store, "CarePlan", "status=active")) == [network["plan"]]
    assert ids(search(any_store, "ServiceRequest", "code=http://snomed.info/sct|409063005")) == [
        network["referral"]
    ]
    assert search(any_store, "ServiceRequest", "intent=order").total == 2
    assert search(any_store, "CarePlan", "category=734163000").total == 2


def test_id_and_last_updated(any_store: ResourceStore, network: dict[str, str]) -> None:
    assert ids(search(any_store, "Patient", f"_id={network['amina']}")) == [network["amina"]]
    assert search(any_store, "Patient", "_lastUpdated=ge2026-11-23").total == 3
    assert search(any_store, "Patient", "_lastUpdated=lt2026-11-23").total == 0


def test_summary_count_gives_the_total_only(
    any_store: ResourceStore, network: dict[str, str]
) -> None:
    page = search(any_store, "Patient", "_summary=count")
    assert page.total == 3
    assert page.matches == []


def test_include_brings_the_referenced_resource(
    any_store: ResourceStore, network: dict[str, str]
) -> None:
    page = search(
        any_store,
        "ServiceRequest",
        "performer=Organization/harbor-clinic&_include=ServiceRequest:performer",
    )
    assert ids(page) == [network["referral"]]
    assert [(r.resource_type, r.id) for r in page.included] == [("Organization", "harbor-clinic")]


def test_include_skips_references_to_absent_resources(
    any_store: ResourceStore, network: dict[str, str]
) -> None:
    page = search(any_store, "ServiceRequest", "code=1&_include=ServiceRequest:performer")
    assert page.included == []


def test_revinclude_brings_the_referring_resources(
    any_store: ResourceStore, network: dict[str, str]
) -> None:
    page = search(any_store, "ServiceRequest", f"_id={network['referral']}&_revinclude=Task:focus")
    assert [(r.resource_type, r.id) for r in page.included] == [("Task", network["task"])]


def test_paging_walks_every_match_once_in_both_directions(any_store: ResourceStore) -> None:
    survivor = any_store.create(valid(patient()))
    plans = [
        any_store.create(valid(care_plan(survivor.id, title=f"Plan {i}"))).id for i in range(7)
    ]
    seen: list[str] = []
    pages = []
    query = f"patient={survivor.id}&_count=3"
    page = search(any_store, "CarePlan", query)
    while True:
        pages.append(page)
        seen += ids(page)
        assert page.total == 7
        if page.next_cursor is None:
            break
        page = search(any_store, "CarePlan", f"{query}&_cursor={page.next_cursor}")
    assert seen == plans
    assert [len(p.matches) for p in pages] == [3, 3, 1]
    back = search(any_store, "CarePlan", f"{query}&_cursor={pages[-1].prev_cursor}")
    assert ids(back) == plans[3:6]


def test_paging_is_stable_when_resources_are_added_meanwhile(any_store: ResourceStore) -> None:
    survivor = any_store.create(valid(patient()))
    plans = [any_store.create(valid(care_plan(survivor.id))).id for _ in range(4)]
    first = search(any_store, "CarePlan", "_count=2")
    any_store.create(valid(care_plan(survivor.id)))  # lands after every existing row
    second = search(any_store, "CarePlan", f"_count=2&_cursor={first.next_cursor}")
    assert ids(first) + ids(second) == plans


def test_sort_by_last_updated_descending(any_store: ResourceStore) -> None:
    survivor = any_store.create(valid(patient()))
    first = any_store.create(valid(care_plan(survivor.id)))
    second = any_store.create(valid(care_plan(survivor.id)))
    any_store.update(
        "CarePlan", first.id, valid(care_plan(survivor.id, status="revoked")), if_match=None
    )
    newest_first = search(any_store, "CarePlan", "_sort=-_lastUpdated")
    assert ids(newest_first) == [first.id, second.id]
    page = search(any_store, "CarePlan", "_sort=-_lastUpdated&_count=1")
    rest = search(any_store, "CarePlan", f"_sort=-_lastUpdated&_count=1&_cursor={page.next_cursor}")
    assert ids(page) + ids(rest) == [first.id, second.id]


def test_a_cursor_for_another_sort_is_refused() -> None:
    from gateway.errors import BadRequest

    token = Cursor(("2026-11-23T09:00:00.000000", 3)).encode()
    with pytest.raises(BadRequest):
        parse_search("CarePlan", [("_cursor", token)]).position()


# -- contributors --------------------------------------------------------------------------------


def test_the_creator_stays_the_contributor_through_every_later_write(
    any_store: ResourceStore,
) -> None:
    stored = any_store.create(valid(patient(), "riverside-shelter"))
    assert stored.contributor == "riverside-shelter"
    updated, _ = any_store.update(
        "Patient", stored.id, valid(patient(gender="other"), "harbor-clinic"), if_match=None
    )
    assert updated.contributor == "riverside-shelter"
    assert any_store.read("Patient", stored.id).contributor == "riverside-shelter"
    assert any_store.vread("Patient", stored.id, 1).contributor == "riverside-shelter"
    history = any_store.history("Patient", stored.id, count=5)
    assert {v.contributor for v in history.versions} == {"riverside-shelter"}
    marker = any_store.delete("Patient", stored.id)
    assert marker is not None
    assert marker.contributor == "riverside-shelter"


def test_update_as_create_and_batches_record_the_contributor(any_store: ResourceStore) -> None:
    org, created = any_store.update(
        "Organization",
        "harbor-clinic",
        valid(organization("harbor-clinic", "Harbor"), "harbor-clinic"),
        if_match=None,
    )
    assert created
    assert org.contributor == "harbor-clinic"
    existing = any_store.create(valid(patient(), "riverside-shelter"))
    written = any_store.write_many(
        valid_all(
            [patient("Okafor", "Amina", mrn="RSH-2"), {**patient(), "id": existing.id}],
            "northside-legal-aid",
        )
    )
    assert [w.contributor for w in written] == ["northside-legal-aid", "riverside-shelter"]
    page = search(any_store, "Patient", "_sort=_id")
    assert {(r.id, r.contributor) for r in page.matches} == {
        (existing.id, "riverside-shelter"),
        (written[0].id, "northside-legal-aid"),
    }


def test_data_the_gateway_wrote_itself_has_no_contributor(any_store: ResourceStore) -> None:
    stored = any_store.create(valid(patient()))
    assert stored.contributor is None
    assert any_store.read("Patient", stored.id).contributor is None


def test_visible_to_keeps_a_partners_own_records_and_the_gateways_directory(
    any_store: ResourceStore,
) -> None:
    from dataclasses import replace

    mine = any_store.create(valid(patient(mrn="HCC-1"), "harbor-clinic"))
    any_store.create(valid(patient(mrn="RSH-1"), "riverside-shelter"))
    plan = any_store.create(valid(care_plan(mine.id), "harbor-clinic"))
    any_store.update(
        "Organization",
        "harbor-clinic",
        valid(organization("harbor-clinic", "Harbor")),
        if_match=None,
    )
    any_store.create(valid({"resourceType": "Organization", "name": "Riverside"}, "x"))
    query = parse_search("Patient", [("_revinclude", "CarePlan:subject")])
    clinic = Visibility("harbor-clinic", frozenset({"Organization"}))
    page = any_store.search(replace(query, visible_to=clinic))
    assert (page.total, ids(page)) == (1, [mine.id])
    assert [r.id for r in page.included] == [plan.id]
    orgs = any_store.search(replace(parse_search("Organization", []), visible_to=clinic))
    assert ids(orgs) == ["harbor-clinic"]
    plans = any_store.search(
        replace(
            parse_search("CarePlan", [("_include", "CarePlan:subject")]),
            visible_to=Visibility("riverside-shelter", frozenset({"Organization"})),
        )
    )
    assert (plans.total, plans.included) == (0, [])
