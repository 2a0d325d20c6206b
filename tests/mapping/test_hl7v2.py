"""The HL7 v2 mappings (mappings/hl7v2/): one Patient per person across ADT and REF messages,
the recipient partner, the labels a referral carries, and what is never mapped."""

from __future__ import annotations

import json
from typing import Any

from adapters.hl7v2 import parse_message
from gateway.consent.labels import labels_for
from gateway.mapping import MappingContext, SourceKey, parse_source_reference, rewrite_placeholders
from gateway.synth.hl7 import adt_a04_messages, ref_i12_messages
from gateway.vocabulary.source import SourceRecord
from gateway.write.admit import check
from tests.mapping.golden_support import fake_local, golden
from tests.mapping.support import (
    GOLDEN,
    MAPPINGS,
    apply,
    context_from_json,
    dumps,
    label_tables,
    parse_yaml_file,
    record_from_json,
    tables,
)

HOSPITAL = MappingContext(
    partner_id="st-marys",
    partner_kind="hospital",
    organizations={"facility:STMARYS": "Organization/st-marys"},
)
SHELTER = MappingContext(
    partner_id="hope-shelter",
    partner_kind="shelter",
    organizations={"facility:STMARYS": "Organization/st-marys"},
)


def _codes(resource: dict[str, Any]) -> list[str]:
    return [c["code"] for c in resource.get("meta", {}).get("security", [])]


def test_adt_and_ref_map_the_patient_with_the_same_spec_block() -> None:
    adt = parse_yaml_file(MAPPINGS / "hl7v2" / "ADT_A01.yaml")
    ref = parse_yaml_file(MAPPINGS / "hl7v2" / "REF_I12.yaml")
    assert adt["resources"][0] == ref["resources"][0]
    assert adt["resources"][0]["resourceType"] == "Patient"
    patient_fields = {f for f in adt["never_map"] if f.startswith(("PID.", "NK1", "GT1", "IN1"))}
    assert patient_fields <= set(ref["never_map"])


def test_an_a04_and_a_later_a08_for_one_pid3_are_one_patient() -> None:
    a04 = apply(*golden("hl7v2", "adt-a04"))
    a08 = apply(*golden("hl7v2", "adt-a08-same-person"))
    assert (
        a04.resources[0].key
        == a08.resources[0].key
        == SourceKey("Patient", "PID", "STMARYS|91528947")
    )
    record_a04, _ = golden("hl7v2", "adt-a04")
    record_a08, _ = golden("hl7v2", "adt-a08-same-person")
    assert record_a04.source_id != record_a08.source_id  # two messages, one person


def test_a_referral_lands_on_the_patient_its_registration_made() -> None:
    """The same partner sends ADT^A04 then REF^I12 for one PID-3: the referral's subject and the
    Task's ``for`` are the placeholder of the ADT's Patient."""
    record, _ = golden("hl7v2", "adt-a04")
    ref_doc = json.loads((GOLDEN / "hl7v2" / "ref-i12-without-aut.input.json").read_text())
    ref_doc["fields"]["PID"] = record.fields["PID"]
    ref_doc["fields"]["patient_identifiers"] = record.fields["patient_identifiers"]
    registered = apply(record, HOSPITAL)
    referred = apply(record_from_json(ref_doc), HOSPITAL)
    patient_key = registered.resources[0].key
    keys = {r.key.resource_type: r for r in referred.resources}
    assert keys["Patient"].key == patient_key
    subject = keys["ServiceRequest"].resource["subject"]["reference"]
    assert parse_source_reference(subject) == patient_key
    assert parse_source_reference(keys["Task"].resource["for"]["reference"]) == patient_key


def test_a_social_security_number_in_pid3_is_neither_an_identifier_nor_the_key() -> None:
    record, context = golden("hl7v2", "adt-a08-same-person")
    assert record.fields["PID"]["patient_identifier_list"][0]["identifier_type_code"] == "SS"
    mapped = apply(record, context)
    out = dumps(mapped.as_json())
    assert "123456789" not in out  # the SSN, in PID-3 and PID-19
    assert "Hidden Lane" not in out  # her address, PID-11
    assert "address" not in mapped.resources[0].resource


def test_pid8_a_and_n_are_other_per_the_v2_to_fhir_ig() -> None:
    for case in ("adt-a04-sex-a-is-other", "adt-a04-sex-n-is-other"):
        assert apply(*golden("hl7v2", case)).resources[0].resource["gender"] == "other"


def test_a_birth_date_that_is_no_date_blocks_the_message_naming_pid7() -> None:
    mapped = apply(*golden("hl7v2", "adt-a04-bad-birth-date"))
    assert mapped.resources == []
    (problem,) = mapped.problems
    assert problem.blocking
    assert problem.place.field == "PID.date_time_of_birth.time"
    assert "19640231" not in problem.reason


def test_an_unknown_receiving_facility_is_an_open_referral() -> None:
    mapped = apply(*golden("hl7v2", "ref-i12-unknown-receiving-facility"))
    resources = {r.key.resource_type: r.resource for r in mapped.resources}
    assert "owner" not in resources["Task"]
    assert "performer" not in resources["ServiceRequest"]
    assert {(p.place.column, p.element, p.blocking) for p in mapped.problems} == {
        ("receiving_facility", "ServiceRequest.performer", False),
        ("receiving_facility", "Task.owner", False),
    }
    assert "NOT_A_PARTNER_FACILITY" not in dumps([p.as_json() for p in mapped.problems])


def test_without_msh6_the_referred_to_providers_facility_is_the_recipient() -> None:
    mapped = apply(*golden("hl7v2", "ref-i12-recipient-from-prd"))
    task = next(r.resource for r in mapped.resources if r.key.resource_type == "Task")
    assert task["owner"] == {"reference": "Organization/st-marys"}


def test_trafficking_and_psychotherapy_label_the_referral_and_its_task() -> None:
    mapped = apply(*golden("hl7v2", "ref-i12-aut-sdv-psy"))
    resources = {r.key.resource_type: r.resource for r in mapped.resources}
    assert _codes(resources["ServiceRequest"]) == ["PSY", "SDV"]
    assert _codes(resources["Task"]) == ["PSY", "SDV"]
    assert _codes(resources["Patient"]) == []  # the person is not labelled by one referral
    # The write-time labels agree (and keep the mapping's): nothing is lowered.
    stored = labels_for(
        rewrite_placeholders(resources["ServiceRequest"], fake_local),
        contributor_kind="shelter",
        tables=label_tables(),
    )
    assert {"PSY", "SDV"} <= {c["code"] for c in stored}


def test_an_abuse_code_and_a_psychiatric_referral_label_a_referral_without_aut() -> None:
    mapped = apply(*golden("hl7v2", "ref-i12-without-aut"))
    record, _ = golden("hl7v2", "ref-i12-without-aut")
    assert "AUT" not in record.fields
    service_request = next(
        r.resource for r in mapped.resources if r.key.resource_type == "ServiceRequest"
    )
    assert service_request["reasonCode"][0]["coding"][0]["code"] == "T76.51XA"
    assert service_request["category"][0]["coding"][0]["code"] == "Psy"  # RF1-3: PSY
    assert _codes(service_request) == ["PSY", "SDV"]


def test_the_icd10cm_label_table_says_what_labels_yaml_says() -> None:
    """Every prefix of icd10cm-sensitive is one labels.yaml gives the same label for ICD-10-CM,
    and every ICD-10-CM prefix of labels.yaml is in the table."""
    table = tables()["icd10cm-sensitive"]
    ours = {
        (value.replace(".", "").upper(), label)
        for value, e in table.entries.items()
        for label in e.labels
    }
    theirs = set(label_tables().prefixes["http://hl7.org/fhir/sid/icd-10-cm"])
    assert ours == theirs


def test_adapter_dependent_synthetic_messages_map_end_to_end_and_pass_the_write_gate() -> None:
    """Depends on adapters/hl7v2.py: synth -> parse_message -> mapping -> admit.check."""
    messages = [*ref_i12_messages(3, seed=7), *adt_a04_messages(2, seed=7, trigger="A08")]
    seen: set[str] = set()
    for message in messages:
        record = parse_message(message)
        assert isinstance(record, SourceRecord)
        mapped = apply(record, SHELTER)
        assert not mapped.blocked, [p.as_json() for p in mapped.problems]
        for item in mapped.resources:
            seen.add(item.key.resource_type)
            check(rewrite_placeholders(item.resource, fake_local))
    assert seen == {"Patient", "ServiceRequest", "Task"}


def test_every_hl7_golden_input_is_what_the_adapter_could_give() -> None:
    """The goldens are parser output (``fields`` as JSON), with their partner."""
    for path in sorted((GOLDEN / "hl7v2").glob("*.input.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        assert (doc["system"], doc["version"]) == ("hl7v2", "2.5.1")
        assert doc["fields"]["structure"] == doc["record_type"]
        context_from_json(doc)
