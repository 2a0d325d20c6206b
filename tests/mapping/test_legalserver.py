"""The LegalServer matter mapping (mappings/legalserver/matter.yaml): only safe phones, never an
email or an address, one Patient per client, DV and immigration matters protected, referrals
to partners, and a Consent the consent engine reads as its recorder's release."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from gateway.consent.model import parse_consent
from gateway.mapping import Mapped, SourceKey, parse_source_reference, rewrite_placeholders
from gateway.vocabulary.source import SourceRecord
from tests.mapping.golden_support import fake_local, golden
from tests.mapping.support import apply, dumps

DV = "matter-dv-consent-referrals-known-and-unknown"
IMMIGRATION = "matter-immigration-without-consent"


def by_type(mapped: Mapped) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in mapped.resources:
        out.setdefault(item.key.resource_type, []).append(item.resource)
    return out


def labels(resource: dict[str, Any]) -> list[str]:
    return [c["code"] for c in resource.get("meta", {}).get("security", [])]


def changed(case: str, **fields: Any) -> tuple[SourceRecord, Any]:
    record, context = golden("legalserver", case)
    new = copy.deepcopy(dict(record.fields)) | fields
    return SourceRecord(
        record.system, record.record_type, record.source_id, new, record.origin, record.version
    ), context


def test_a_phone_not_marked_safe_is_not_mapped_even_when_it_reached_the_mapping() -> None:
    record, context = golden("legalserver", DV)
    assert record.fields["mobile_phone"]
    assert record.fields["mobile_phone_safe"] is False
    patient = by_type(apply(record, context))["Patient"][0]
    values = [t["value"] for t in patient["telecom"]]
    assert record.fields["mobile_phone"] not in values
    assert record.fields["home_phone"] in values  # marked safe: kept


def test_a_safety_flag_must_be_exactly_true() -> None:
    for flag in ("true", 1, None, "t"):
        record, context = changed(DV, home_phone_safe=flag, mobile_phone_safe=flag)
        patient = by_type(apply(record, context))["Patient"][0]
        assert "telecom" not in patient, flag


def test_email_and_addresses_are_never_mapped_even_when_marked_safe() -> None:
    address = {"street": "41 Hidden Lane", "city": "Washington", "state": "DC", "zip": "20001"}
    record, context = changed(
        DV, safe_address=True, client_address_home=address, client_address_mailing=address
    )
    mapped = apply(record, context)
    out = dumps(mapped.as_json())
    assert "Hidden Lane" not in out
    assert record.fields["client_email_address"] not in out
    assert "address" not in by_type(mapped)["Patient"][0]


def test_two_matters_of_one_client_are_one_patient() -> None:
    first, context = golden("legalserver", DV)
    second, _ = changed(DV)
    second = SourceRecord(
        second.system, second.record_type, "00000000-0000-4000-8000-000000000001",
        second.fields, second.origin, second.version,
    )  # fmt: skip
    keys = [apply(r, context).resources[0].key for r in (first, second)]
    assert keys[0] == keys[1] == SourceKey("Patient", "client", str(first.fields["client_id"]))


def test_a_dv_matter_is_sdv_with_its_problem_name_and_no_case_title() -> None:
    record, context = changed(DV, case_title="Doe v. Doe")
    resources = by_type(apply(record, context))
    care_plan = resources["CarePlan"][0]
    assert labels(care_plan) == ["SDV"]
    assert care_plan["title"] == "Domestic Abuse"
    assert "Doe v. Doe" not in dumps(resources)
    assert all(labels(sr) == ["SDV"] for sr in resources["ServiceRequest"])


def test_an_immigration_matter_names_its_problem_nowhere_and_is_sdv() -> None:
    record, context = golden("legalserver", IMMIGRATION)
    assert record.fields["legal_problem_code"].startswith("81 ")
    assert record.fields["victim_of_domestic_violence"] is False
    assert record.fields["special_legal_problem_code"] == []
    mapped = apply(record, context)
    out = dumps(mapped.as_json())
    for word in ("Immigration", "Naturalization", "lsc-problem-code", '"81'):
        assert word not in out
    resources = by_type(mapped)
    assert "title" not in resources["CarePlan"][0]
    assert labels(resources["CarePlan"][0]) == ["SDV"]
    assert all(labels(sr) == ["SDV"] for sr in resources["ServiceRequest"])


def test_without_consent_to_share_there_is_no_consent() -> None:
    for flag in (False, None, "true"):
        record, context = changed(DV, consent_to_share=flag)
        assert "Consent" not in by_type(apply(record, context)), flag


def test_the_consent_is_its_recorders_release_to_the_named_partners_only() -> None:
    record, context = golden("legalserver", DV)
    mapped = apply(record, context)
    (consent,) = by_type(mapped)["Consent"]
    parsed = parse_consent(
        rewrite_placeholders(consent, fake_local) | {"id": "c1"}, recorder="capital-legal-aid"
    )
    assert parsed.counts
    assert parsed.can_permit
    assert parsed.written
    assert parsed.root is not None
    assert not parsed.root.deny
    # Every recipient the network knows is an actor, and nobody else.
    known = {
        context.organizations[f"name:{name.casefold()}"]
        for name in record.fields["consent_recipients"]
        if f"name:{name.casefold()}" in context.organizations
    }
    assert known
    assert parsed.root.actors == frozenset(known)
    assert parsed.root.purposes is None  # LegalServer names none (docs/mappings.md)
    assert parsed.root.path_labels == frozenset()  # so it releases no SDV-labelled record
    assert parsed.period is not None
    assert parsed.period[0] == datetime.fromisoformat(record.fields["consent_start_date"]).replace(
        tzinfo=UTC
    )


def test_a_consent_recipient_that_is_not_a_partner_is_a_problem_naming_the_list() -> None:
    mapped = apply(*golden("legalserver", "matter-housing-closed-with-consent"))
    (problem,) = mapped.problems
    assert (problem.place.field, problem.place.column) == (
        "consent_recipients[0]",
        "consent_recipients",
    )
    assert not problem.blocking
    assert "St. Mary" not in problem.reason
    assert "Metro" not in problem.reason


def test_a_consent_without_its_signed_form_holds_the_whole_matter() -> None:
    mapped = apply(*golden("legalserver", "matter-consent-without-form"))
    assert mapped.resources == []
    assert [(p.place.column, p.blocking) for p in mapped.problems] == [("consent_form", True)]


def test_each_referral_is_a_service_request_keyed_by_its_uuid_based_on_the_plan() -> None:
    record, context = golden("legalserver", DV)
    mapped = apply(record, context)
    referrals = [r for r in mapped.resources if r.key.resource_type == "ServiceRequest"]
    uuids = [r["referral_uuid"] for r in record.fields["outgoing_referrals"]]
    assert [r.key for r in referrals] == [SourceKey("ServiceRequest", "referral", u) for u in uuids]
    care_plan = next(r for r in mapped.resources if r.key.resource_type == "CarePlan")
    for item in referrals:
        assert parse_source_reference(item.resource["basedOn"][0]["reference"]) == care_plan.key
    performers = [r.resource.get("performer") for r in referrals]
    assert [{"reference": "Organization/harbor-clinic"}] in performers
    assert None in performers  # the unknown organisation: an open referral
    (problem,) = mapped.problems
    assert problem.place.field.startswith("outgoing_referrals[")
    assert problem.element == "ServiceRequest.performer"


def test_a_referral_without_its_uuid_holds_the_matter() -> None:
    record, context = golden("legalserver", DV)
    referrals = copy.deepcopy(record.fields["outgoing_referrals"])
    referrals[1]["referral_uuid"] = None
    record2, _ = changed(DV, outgoing_referrals=referrals)
    mapped = apply(record2, context)
    assert mapped.resources == []
    assert ("outgoing_referrals[1].referral_uuid", "ServiceRequest key", True) in [
        (p.place.field, p.element, p.blocking) for p in mapped.problems
    ]


def test_gender_identities_give_no_administrative_gender() -> None:
    for value in ("Non-Binary", "Transgender", "Unknown"):
        record, context = changed(DV, client_gender=value)
        mapped = apply(record, context)
        assert "gender" not in by_type(mapped)["Patient"][0]
        assert mapped.problems[:-1] == []
