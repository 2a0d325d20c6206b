"""The write path's gate: the store takes only what ``admit`` made, and ``admit`` makes it only
from a resource that ``check`` found valid R4."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.consent.labels import load_label_tables
from gateway.errors import Unprocessable
from gateway.store.port import ResourceStore
from gateway.write.admit import Checked, ValidResource, admit, check, check_batches
from tests.consent.test_engine import POLICIES
from tests.support.records import patient

SHELTER_ADDRESS = {"line": ["12 Elm Street"], "city": "Springfield"}


def test_nothing_but_the_gate_makes_a_checked_or_valid_resource() -> None:
    with pytest.raises(TypeError, match=r"only from gateway\.write\.admit"):
        Checked(patient())
    with pytest.raises(TypeError, match=r"only from gateway\.write\.admit"):
        ValidResource(patient(), "riverside-shelter")


def test_the_store_refuses_a_plain_dictionary(any_store: ResourceStore) -> None:
    doc: Any = patient()
    with pytest.raises(TypeError, match="ValidResource"):
        any_store.create(doc)
    with pytest.raises(TypeError, match="ValidResource"):
        any_store.write_many([doc])
    with pytest.raises(TypeError, match="ValidResource"):
        any_store.update("Patient", "p1", doc, if_match=None)


def test_check_refuses_invalid_r4_naming_the_element_not_the_value() -> None:
    with pytest.raises(Unprocessable) as refused:
        check({**patient(), "birthDate": "17/03/1994"})
    assert refused.value.issues[0].expression == ("Patient.birthDate",)
    assert "17/03/1994" not in str(refused.value.issues)


def test_check_makes_this_gateways_own_absolute_references_relative() -> None:
    doc = {
        **patient(),
        "managingOrganization": {"reference": "https://gw.test/fhir/Organization/o1"},
    }
    checked = check(doc, base="https://gw.test/fhir")
    assert checked.doc["managingOrganization"] == {"reference": "Organization/o1"}


def test_admit_labels_a_shelters_survivor_address_and_records_the_contributor() -> None:
    tables = load_label_tables(POLICIES)
    valid = admit(
        check({**patient(), "address": [SHELTER_ADDRESS]}),
        contributor="riverside-shelter",
        contributor_kind="shelter",
        labels=tables,
    )
    codes = {c["code"] for c in valid.doc["meta"]["security"]}
    assert {"LOCIS", "R"} <= codes
    assert valid.contributor == "riverside-shelter"


def test_a_rewritten_transaction_reference_must_become_local() -> None:
    entry = "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    checked = check({**patient(), "managingOrganization": {"reference": entry}})
    rewritten = checked.rewritten({entry: "Organization/o1"})
    assert rewritten.doc["managingOrganization"] == {"reference": "Organization/o1"}
    with pytest.raises(ValueError, match="local"):
        checked.rewritten({entry: "https://elsewhere/fhir/Organization/o1"})


def test_check_batches_keeps_input_order_and_reports_rejects_by_position() -> None:
    docs = [patient(mrn=f"RSH-{n}") for n in range(5)]
    docs.insert(3, {"resourceType": "Observation", "status": "final"})
    out = list(check_batches(docs, batch_size=4, workers=0))
    checked = [c for batch, _, _ in out for c in batch]
    rejected = [r.position for _, batch, _ in out for r in batch]
    assert [c.doc["identifier"][0]["value"] for c in checked] == [f"RSH-{n}" for n in range(5)]
    assert rejected == [3]
    assert sum(n for _, _, n in out) == 6
