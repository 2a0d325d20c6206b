"""The batch ingest path: every resource validated, the valid ones written, the rest reported
with the elements at fault, in input order, whether validation runs here or in worker processes."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.access.requester import Requester
from gateway.consent.store import ConsentedStore
from gateway.errors import Forbidden
from gateway.ingest.batch import BatchIngest
from gateway.store.port import ResourceStore
from gateway.store.query import parse_search
from tests.support.records import care_plan, patient
from tests.support.valid import valid

SHELTER = Requester(
    "riverside-shelter", "shelter", "Organization/riverside-shelter", ("system/*.cruds",)
)


def as_shelter(store: ResourceStore) -> ConsentedStore:
    """The shelter's own store: what an ingest for the shelter writes through."""
    return ConsentedStore(store, SHELTER)


def survivors_with_two_bad_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = [patient(mrn=f"RSH-{n}") for n in range(7)]
    records.insert(2, {**patient(mrn="RSH-bad-date"), "birthDate": "17/03/1994"})
    records.insert(5, {"resourceType": "Observation", "status": "final"})
    return records


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "two-workers"])
def test_valid_records_land_and_bad_ones_come_back_with_their_position(
    any_store: ResourceStore, workers: int
) -> None:
    records = survivors_with_two_bad_records()
    seen: list[int] = []
    report = BatchIngest(as_shelter(any_store), batch_size=3, workers=workers).run(
        records, on_batch=seen.append
    )
    assert report.written == 7
    assert [r.position for r in report.rejected] == [2, 5]
    assert report.rejected[0].issues[0].expression == ("Patient.birthDate",)
    assert "17/03/1994" not in str(report.rejected[0].issues)
    assert report.rejected[1].issues[0].code == "not-supported"
    assert sum(seen) == len(records)
    assert any_store.search(parse_search("Patient", [("_summary", "count")])).total == 7


def test_batches_are_written_in_input_order(any_store: ResourceStore) -> None:
    survivor = any_store.create(valid(patient(), "riverside-shelter"))
    plans = [care_plan(survivor.id, title=f"Plan {n}") for n in range(10)]
    BatchIngest(as_shelter(any_store), batch_size=4, workers=0).run(plans)
    page = any_store.search(parse_search("CarePlan", [("_count", "20")]))
    assert [m.body.count(f"Plan {n}".encode()) for n, m in enumerate(page.matches)] == [1] * 10


def test_nothing_to_ingest_is_an_empty_report(any_store: ResourceStore) -> None:
    report = BatchIngest(as_shelter(any_store), workers=1).run([])
    assert (report.written, report.rejected) == (0, [])


def test_nonsense_settings_are_refused(any_store: ResourceStore) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BatchIngest(as_shelter(any_store), batch_size=0)
    with pytest.raises(ValueError, match="workers"):
        BatchIngest(as_shelter(any_store), workers=-1)


def test_a_requesters_store_hands_out_neither_record_heads_nor_the_consent_probe(
    any_store: ResourceStore,
) -> None:
    """Whose a record is, and whether a Consent exists, are the consent layer's to use: a
    partner's store answers neither (a door that asked would learn of hidden records)."""
    other = any_store.create(valid(patient("Okafor", "Amina"), "harbor-clinic"))
    shelter = as_shelter(any_store)
    with pytest.raises(Forbidden):
        shelter.contributors([("Patient", other.id)])
    with pytest.raises(Forbidden):
        shelter.consent_probe(other.id, recorder="harbor-clinic", actor=("Organization", "x"))
