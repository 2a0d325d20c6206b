"""The engine features the HL7 v2 and LegalServer mappings need, on small specs written here:
per-resource keys, partner Organizations by lookup key, one resource per row, label-only code
lookups, boolean conditions, HL7 dates, rows bound under a name."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.mapping import MappingContext, MappingSpecError, SourceKey, parse_source_reference
from gateway.mapping.engine import NOT_A_PARTNER
from gateway.vocabulary.source import Origin, Place, SourceRecord
from tests.mapping.support import compile_spec, dumps

SECRET = "Rosalind Okafor-Nwosu"  # a value that must never appear in a problem
PARTNER = MappingContext(
    partner_id="hope-shelter",
    partner_kind="shelter",
    organizations={
        "facility:STMARYS": "Organization/st-marys",
        "name:harbor community clinic": "Organization/harbor-clinic",
        "id:metro-general": "Organization/metro-general",
    },
)


def spec(*resources: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "system": "hl7v2",
        "record_type": "REF_I12",
        "version": "0.1.0",
        "source_versions": ["2.5.1"],
        "never_map": ["Secret"],
        "resources": list(resources),
        **extra,
    }


def rec(fields: dict[str, Any], source_id: str = "R-1") -> SourceRecord:
    return SourceRecord(
        system="hl7v2",
        record_type="REF_I12",
        source_id=source_id,
        fields=fields,
        origin=Origin(source="mllp", locator="message"),
        version="2.5.1",
    )


PID_KEY = {
    "record_type": "PID",
    "source_id": {
        "$expr": '(PID.id and PID.authority) ? PID.authority & "|" & PID.id',
        "$required": True,
    },
}
PATIENT = {
    "resourceType": "Patient",
    "key": PID_KEY,
    "elements": {
        "identifier": [{"value": {"$field": "PID.id"}}],
        "managingOrganization": {"$partner_ref": True},
    },
}


# --- per-resource keys ------------------------------------------------------------------------


def test_without_a_key_a_resource_is_keyed_by_its_record() -> None:
    mapping = compile_spec(
        spec({"resourceType": "Patient", "elements": {"gender": {"$const": "female"}}})
    )
    mapped = mapping.apply(rec({}), PARTNER)
    assert [r.key for r in mapped.resources] == [SourceKey("Patient", "REF_I12", "R-1")]


def test_a_resource_key_names_the_person_not_the_message() -> None:
    """Two messages about one person (one PID-3) give one Patient key."""
    mapping = compile_spec(spec(PATIENT))
    pid = {"PID": {"id": "13897788", "authority": "HOPE"}}
    first = mapping.apply(rec(pid, "MSG-1"), PARTNER)
    second = mapping.apply(rec(pid, "MSG-2"), PARTNER)
    assert first.resources[0].key == second.resources[0].key
    assert first.resources[0].key == SourceKey("Patient", "PID", "HOPE|13897788")


def test_a_key_that_yields_nothing_blocks_the_record_naming_the_resource() -> None:
    mapping = compile_spec(
        spec(
            PATIENT,
            {"resourceType": "Task", "elements": {"status": {"$const": "requested"}}},
        )
    )
    mapped = mapping.apply(rec({"PID": {"authority": "HOPE"}, "Name": SECRET}), PARTNER)
    assert mapped.resources == []
    assert [(p.element, p.blocking) for p in mapped.problems] == [("Patient key", True)]
    assert SECRET not in dumps([p.as_json() for p in mapped.problems])


def test_a_key_of_the_wrong_type_blocks_too() -> None:
    mapping = compile_spec(
        spec({**PATIENT, "key": {"record_type": "PID", "source_id": {"$expr": "PID.n"}}})
    )
    mapped = mapping.apply(rec({"PID": {"n": 5, "id": "x"}}), PARTNER)
    assert mapped.resources == []
    assert [(p.reason, p.blocking) for p in mapped.problems] == [("resource key is missing", True)]


def test_a_source_ref_takes_a_computed_source_id_and_matches_the_key() -> None:
    mapping = compile_spec(
        spec(
            PATIENT,
            {
                "resourceType": "Task",
                "elements": {
                    "for": {
                        "$expr": 'PID.authority & "|" & PID.id',
                        "$source_ref": {"resourceType": "Patient", "record_type": "PID"},
                    }
                },
            },
        )
    )
    mapped = mapping.apply(rec({"PID": {"id": "7:a b", "authority": "HOPE"}}), PARTNER)
    patient, task = mapped.resources
    assert parse_source_reference(task.resource["for"]["reference"]) == patient.key


# --- $organization ----------------------------------------------------------------------------


def recipient(prefix: str, key: Any) -> dict[str, Any]:
    return spec(
        {
            "resourceType": "Task",
            "elements": {"owner": {"$organization": {"prefix": prefix, "key": key}}},
        }
    )


def test_a_known_facility_is_a_reference_to_its_partner_organization() -> None:
    mapping = compile_spec(recipient("facility", {"$field": "receiving_facility"}))
    mapped = mapping.apply(rec({"receiving_facility": " STMARYS "}), PARTNER)
    assert mapped.resources[0].resource["owner"] == {"reference": "Organization/st-marys"}
    assert mapped.problems == []


def test_a_partner_name_is_matched_case_folded_with_its_spaces_made_one() -> None:
    mapping = compile_spec(recipient("name", {"$field": "to"}))
    mapped = mapping.apply(rec({"to": "HARBOR  Community\tClinic"}), PARTNER)
    assert mapped.resources[0].resource["owner"] == {"reference": "Organization/harbor-clinic"}


def test_prefixes_keep_facilities_names_and_ids_apart() -> None:
    mapping = compile_spec(recipient("name", {"$field": "to"}))
    mapped = mapping.apply(rec({"to": "STMARYS"}), PARTNER)
    assert mapped.resources == []  # "STMARYS" is a facility, not a partner's name
    ids = compile_spec(recipient("id", {"$field": "to"})).apply(
        rec({"to": "metro-general"}), PARTNER
    )
    assert ids.resources[0].resource["owner"] == {"reference": "Organization/metro-general"}


def test_an_unknown_recipient_is_absent_and_a_problem_naming_the_field_not_the_value() -> None:
    mapping = compile_spec(recipient("name", {"$field": "to"}))
    mapped = mapping.apply(rec({"to": SECRET}), PARTNER)
    assert mapped.resources == []  # the Task had nothing else
    assert [(p.place, p.reason, p.element, p.blocking) for p in mapped.problems] == [
        (Place(file="mllp", column="to"), f"to: {NOT_A_PARTNER}", "Task.owner", False)
    ]
    assert SECRET not in dumps([p.as_json() for p in mapped.problems])


def test_by_default_the_network_knows_no_organization() -> None:
    mapping = compile_spec(recipient("facility", {"$field": "f"}))
    mapped = mapping.apply(rec({"f": "STMARYS"}), MappingContext("p", "shelter"))
    assert mapped.resources == []
    assert [p.reason for p in mapped.problems] == [f"f: {NOT_A_PARTNER}"]


def test_an_absent_recipient_is_no_problem() -> None:
    mapping = compile_spec(recipient("facility", {"$field": "f"}))
    assert mapping.apply(rec({}), PARTNER).problems == []


def test_with_first_the_problem_names_the_alternative_that_gave_the_key() -> None:
    key = {"$first": [{"$field": "MSH6"}, {"$field": "PRD.facility"}]}
    mapping = compile_spec(recipient("facility", key))
    fallback = mapping.apply(rec({"PRD": {"facility": "STMARYS"}}), PARTNER)
    assert fallback.resources[0].resource["owner"] == {"reference": "Organization/st-marys"}
    unknown = mapping.apply(rec({"PRD": {"facility": SECRET}}), PARTNER)
    assert [(p.place.field, p.place.column) for p in unknown.problems] == [
        ("PRD.facility", "facility")
    ]


@pytest.mark.parametrize(
    ("organizations", "message"),
    [
        ({"STMARYS": "Organization/st-marys"}, "key is not <prefix>:<value>"),
        ({"room:STMARYS": "Organization/st-marys"}, "key is not <prefix>:<value>"),
        ({"facility:STMARYS": "Patient/st-marys"}, "value is not Organization/<id>"),
        ({"facility:STMARYS": "Organization/a b"}, "value is not Organization/<id>"),
    ],
)
def test_a_context_refuses_organizations_it_cannot_use_without_quoting_them(
    organizations: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        MappingContext("p", "shelter", organizations=organizations)
    assert "STMARYS" not in str(raised.value)


def test_a_context_keeps_its_own_copy_of_the_organizations() -> None:
    given = {"facility:X": "Organization/x"}
    context = MappingContext("p", "shelter", organizations=given)
    given["facility:Y"] = "Organization/y"
    assert dict(context.organizations) == {"facility:X": "Organization/x"}


# --- one resource per row, label-only lookups, rows bound under a name --------------------------


def test_each_gives_one_resource_per_row_with_the_record_still_in_scope() -> None:
    mapping = compile_spec(
        spec(
            {
                "resourceType": "ServiceRequest",
                "each": {"field": "referrals", "as": "referral"},
                "key": {"record_type": "referral", "source_id": {"$field": "referral.uuid"}},
                "elements": {
                    "status": {"$field": "referral.status", "$as": "code", "$expected": True},
                    "subject": {
                        "$field": "client",
                        "$source_ref": {"resourceType": "Patient", "record_type": "client"},
                    },
                },
            }
        )
    )
    mapped = mapping.apply(
        rec({"client": "51", "referrals": [{"uuid": "a", "status": "active"}, {"uuid": "b"}]}),
        PARTNER,
    )
    assert [r.key for r in mapped.resources] == [
        SourceKey("ServiceRequest", "referral", "a"),
        SourceKey("ServiceRequest", "referral", "b"),
    ]
    assert all("subject" in r.resource for r in mapped.resources)
    assert [(p.place.field, p.reason) for p in mapped.problems] == [
        ("referrals[1].status", "referrals.status: is missing")
    ]


def test_labels_come_from_every_cell_by_longest_prefix_and_unknown_values_label_nothing() -> None:
    mapping = compile_spec(
        spec(
            {
                "resourceType": "Task",
                "labels": [
                    {"field": "DG1[].code", "table": "icd10cm-sensitive", "prefix": True},
                    {"field": "PR1[].code", "table": "cpt-sensitive", "prefix": True},
                ],
                "elements": {"status": {"$const": "requested"}},
            }
        )
    )
    labelled = mapping.apply(
        rec({"DG1": [{"code": "Z59.01"}, {"code": "T74.51XA"}], "PR1": [{"code": "90837"}]}),
        PARTNER,
    )
    security = labelled.resources[0].resource["meta"]["security"]
    assert [c["code"] for c in security] == ["PSY", "SDV"]
    plain = mapping.apply(rec({"DG1": [{"code": "Z59.01"}], "PR1": [{"code": "99401"}]}), PARTNER)
    assert "meta" not in plain.resources[0].resource
    assert plain.problems == []


def test_a_label_rule_over_a_table_that_labels_nothing_is_refused() -> None:
    doc = spec(
        {
            "resourceType": "Task",
            "labels": [{"field": "x", "table": "hl7-referral-priority"}],
            "elements": {"status": {"$const": "requested"}},
        }
    )
    with pytest.raises(MappingSpecError, match="labels nothing"):
        compile_spec(doc)


def test_each_as_binds_plain_values_and_problems_name_their_row() -> None:
    mapping = compile_spec(
        spec(
            {
                "resourceType": "Consent",
                "elements": {
                    "provision": {
                        "actor": [
                            {
                                "$each": "recipients",
                                "$each_as": "recipient",
                                "$needs": [
                                    "reference",
                                ],
                                "reference": {
                                    "$organization": {
                                        "prefix": "name",
                                        "key": {"$field": "recipient"},
                                    }
                                },
                            }
                        ]
                    }
                },
            }
        )
    )
    mapped = mapping.apply(rec({"recipients": [SECRET, "Harbor Community Clinic"]}), PARTNER)
    actors = mapped.resources[0].resource["provision"]["actor"]
    assert actors == [{"reference": {"reference": "Organization/harbor-clinic"}}]
    assert [(p.place.field, p.place.column, p.reason) for p in mapped.problems] == [
        ("recipients[0]", "recipients", f"recipients: {NOT_A_PARTNER}")
    ]


def test_each_as_without_each_is_refused() -> None:
    doc = spec(
        {"resourceType": "Task", "elements": {"note": [{"$each_as": "x", "text": {"$const": "t"}}]}}
    )
    with pytest.raises(MappingSpecError, match="each_as"):
        compile_spec(doc)


# --- conditions, conversions, outputs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "mapped"),
    [(True, True), (False, False), ("true", False), (1, False), (None, False), ("t", False)],
)
def test_a_boolean_condition_holds_only_for_the_json_boolean(flag: Any, mapped: bool) -> None:
    mapping = compile_spec(
        spec(
            {
                "resourceType": "Patient",
                "elements": {
                    "telecom": [
                        {
                            "$when": {"field": "safe", "equals": True},
                            "value": {"$field": "phone"},
                        }
                    ]
                },
            }
        )
    )
    result = mapping.apply(rec({"safe": flag, "phone": "+1 202 555 0100"}), PARTNER)
    assert bool(result.resources) is mapped


@pytest.mark.parametrize(
    ("value", "as_date", "as_datetime"),
    [
        ("19640625", "1964-06-25", "1964-06-25"),
        ("196406", "1964-06", "1964-06"),
        ("1964", "1964", "1964"),
        ("20261102083736-0500", "2026-11-02", "2026-11-02T08:37:36-05:00"),
        ("202611020837+0100", "2026-11-02", "2026-11-02T08:37:00+01:00"),
        ("20261102083736.25-0500", "2026-11-02", "2026-11-02T08:37:36.25-05:00"),
        ("20261102083736", "2026-11-02", "2026-11-02"),  # a time without its zone: the date
    ],
)
def test_hl7_dates_keep_their_precision(value: str, as_date: str, as_datetime: str) -> None:
    mapping = compile_spec(
        spec(
            {
                "resourceType": "Task",
                "elements": {
                    "authoredOn": {"$field": "d", "$as": "v2datetime"},
                    "lastModified": {"$field": "d", "$as": "v2date"},
                },
            }
        )
    )
    resource = mapping.apply(rec({"d": value}), PARTNER).resources[0].resource
    assert (resource["lastModified"], resource["authoredOn"]) == (as_date, as_datetime)


@pytest.mark.parametrize("bad", ["19640231", "1964-06-25", "19641301", "2026110225", "x"])
def test_an_invalid_hl7_date_with_invalid_blocking_blocks_but_a_missing_one_does_not(
    bad: str,
) -> None:
    mapping = compile_spec(
        spec(
            {
                "resourceType": "Patient",
                "elements": {
                    "gender": {"$const": "female"},
                    "birthDate": {"$field": "dob", "$as": "v2date", "$invalid": "blocking"},
                },
            }
        )
    )
    refused = mapping.apply(rec({"dob": bad}), PARTNER)
    assert refused.resources == []
    assert [(p.place.column, p.element, p.blocking) for p in refused.problems] == [
        ("dob", "Patient.birthDate", True)
    ]
    assert bad not in dumps([p.as_json() for p in refused.problems])
    assert mapping.apply(rec({}), PARTNER).resources


def test_output_display_gives_the_tables_name_and_nothing_for_an_entry_without_one() -> None:
    mapping = compile_spec(
        spec(
            {
                "resourceType": "CarePlan",
                "elements": {
                    "intent": {"$const": "plan"},
                    "title": {
                        "$field": "problem",
                        "$expr": '$substringBefore($, " ")',
                        "$table": "legalserver-problem-codes",
                        "$output": "display",
                    },
                },
            }
        )
    )
    named = mapping.apply(rec({"problem": "37 whatever the site wrote"}), PARTNER)
    assert named.resources[0].resource["title"] == "Domestic Abuse"
    unnamed = mapping.apply(rec({"problem": "81 Immigration/Naturalization"}), PARTNER)
    assert "title" not in unnamed.resources[0].resource
    assert "Immigration" not in dumps(unnamed.as_json())
