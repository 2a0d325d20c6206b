"""The engine's rules, on small specs written here: empty is absent, problems name and never
quote, required means all or nothing, expressions fail into problems, placeholders are exact."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.mapping import (
    MappingContext,
    MappingSet,
    SourceKey,
    compile_document,
    parse_source_reference,
    rewrite_placeholders,
    source_reference,
)
from gateway.mapping.codes import table_from_dict
from gateway.vocabulary.source import Place
from tests.mapping.support import SHELTER, compile_spec, dumps, record, schema, tables

SECRET = "Rosalind Okafor-Nwosu"  # a value that must never appear in a problem


def spec(elements: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "system": "hmis-csv",
        "record_type": "Client",
        "version": "0.1.0",
        "source_versions": ["FY2024", "FY2026"],
        "never_map": ["SSN"],
        "resources": [{"resourceType": "Patient", "elements": elements}],
        **extra,
    }


def client(**fields: Any) -> Any:
    return record("Client", "CL-1", {"PersonalID": "CL-1", **fields}, row=7)


IDENTIFIER = {"identifier": [{"system": {"$const": "urn:x"}, "value": {"$field": "PersonalID"}}]}


# --- empty values ---------------------------------------------------------------------------


@pytest.mark.parametrize("empty", ["", "   ", None, "\t"])
def test_an_empty_cell_maps_exactly_as_an_absent_one(empty: Any) -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "name": [{"family": {"$field": "LastName"}, "given": [{"$field": "FirstName"}]}],
            }
        )
    )
    absent = mapping.apply(client(FirstName="Ada"), SHELTER)
    blank = mapping.apply(client(FirstName="Ada", LastName=empty), SHELTER)
    assert blank.as_json() == absent.as_json()
    assert absent.resources[0].resource["name"] == [{"given": ["Ada"]}]


def test_objects_and_arrays_left_empty_produce_no_element() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "name": [{"family": {"$field": "LastName"}, "given": [{"$field": "FirstName"}]}],
            }
        )
    )
    patient = mapping.apply(client(), SHELTER).resources[0].resource
    assert patient == {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:x", "value": "CL-1"}],
    }


def test_needs_drops_an_object_whose_needed_element_is_missing() -> None:
    mapping = compile_spec(
        spec(
            {
                "identifier": [
                    {"$needs": ["value"], "system": {"$const": "urn:x"}, "value": {"$field": "MRN"}}
                ]
            }
        )
    )
    assert mapping.apply(client(), SHELTER).resources == []


def test_values_are_trimmed() -> None:
    mapping = compile_spec(spec({**IDENTIFIER, "birthDate": {"$field": "DOB", "$as": "date"}}))
    patient = mapping.apply(client(DOB="  1990-04-01 "), SHELTER).resources[0].resource
    assert patient["birthDate"] == "1990-04-01"


# --- problems ---------------------------------------------------------------------------------


def test_a_value_missing_from_its_code_table_is_a_problem_naming_the_column_not_the_value() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "gender": {"$field": "Sex", "$table": "hmis-sex-gender", "$output": "code"},
            }
        )
    )
    mapped = mapping.apply(client(Sex=SECRET), SHELTER)
    assert [p.as_json() for p in mapped.problems] == [
        {
            "place": {"file": "Client.csv", "row": 7, "column": "Sex"},
            "reason": "Sex: value is not in code table hmis-sex-gender",
            "element": "Patient.gender",
            "blocking": False,
        }
    ]
    assert "gender" not in mapped.resources[0].resource
    assert SECRET not in dumps(mapped.as_json())


def test_unknown_omit_maps_an_unknown_value_to_nothing_without_a_problem() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "gender": {
                    "$field": "Sex",
                    "$table": "hmis-sex-gender",
                    "$output": "code",
                    "$unknown": "omit",
                },
            }
        )
    )
    mapped = mapping.apply(client(Sex="7"), SHELTER)
    assert mapped.problems == []
    assert "gender" not in mapped.resources[0].resource


def test_a_table_value_of_another_source_version_is_a_problem() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "gender": {"$field": "Sex", "$table": "hmis-sex-gender", "$output": "code"},
            }
        )
    )
    mapped = mapping.apply(
        record("Client", "CL-1", {"PersonalID": "CL-1", "Sex": "1"}, version="FY2024"), SHELTER
    )
    assert [p.reason for p in mapped.problems] == [
        "Sex: value of code table hmis-sex-gender is not defined in this source version"
    ]


@pytest.mark.parametrize(
    ("as_", "value", "reason"),
    [
        ("date", "17/03/1994", "DOB: is not a date (yyyy-mm-dd)"),
        ("date", "1994-02-30", "DOB: is not a date (yyyy-mm-dd)"),
        ("string", "Ada\x00Lovelace", "DOB: contains control characters"),
        ("code", "two  spaces", "DOB: is not a code (no inner runs of spaces)"),
        ("id", "not an id!", "DOB: is not a FHIR id"),
        ("uri", "has a space", "DOB: is not a URI (contains spaces)"),
    ],
)
def test_a_value_that_is_not_what_the_element_needs_is_a_problem(
    as_: str, value: str, reason: str
) -> None:
    mapping = compile_spec(spec({**IDENTIFIER, "birthDate": {"$field": "DOB", "$as": as_}}))
    mapped = mapping.apply(client(DOB=value), SHELTER)
    assert [p.reason for p in mapped.problems] == [reason]
    assert value not in dumps(mapped.as_json())


def test_a_datetime_cell_gives_its_date() -> None:
    mapping = compile_spec(spec({**IDENTIFIER, "birthDate": {"$field": "DOB", "$as": "date"}}))
    patient = mapping.apply(client(DOB="2026-11-20 14:30:00"), SHELTER).resources[0].resource
    assert patient["birthDate"] == "2026-11-20"


def test_a_problem_in_a_required_element_means_no_resources_at_all() -> None:
    doc = spec({**IDENTIFIER, "birthDate": {"$field": "DOB", "$as": "date", "$required": True}})
    doc["resources"].append(
        {"resourceType": "Consent", "elements": {"status": {"$const": "active"}}}
    )
    mapping = compile_spec(doc)
    mapped = mapping.apply(client(DOB="yesterday"), SHELTER)
    assert mapped.resources == []
    assert [(p.reason, p.blocking) for p in mapped.problems] == [
        ("DOB: is not a date (yyyy-mm-dd)", True)
    ]
    assert mapped.blocked


def test_a_required_element_is_required_even_when_its_condition_is_false() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "birthDate": {
                    "$field": "DOB",
                    "$required": True,
                    "$when": {"field": "DOBDataQuality", "equals": "1"},
                },
            }
        )
    )
    mapped = mapping.apply(client(DOB="1990-01-01", DOBDataQuality="9"), SHELTER)
    assert mapped.resources == []
    assert [p.reason for p in mapped.problems] == ["DOB: is missing"]


def test_expected_reports_a_missing_value_without_blocking() -> None:
    mapping = compile_spec(spec({**IDENTIFIER, "birthDate": {"$field": "DOB", "$expected": True}}))
    mapped = mapping.apply(client(), SHELTER)
    assert [(p.reason, p.blocking) for p in mapped.problems] == [("DOB: is missing", False)]
    assert len(mapped.resources) == 1


def test_problems_inside_each_name_the_row_of_the_list() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "name": [
                    {"$each": "Aliases", "given": [{"$field": "Given", "$as": "code"}]},
                ],
            }
        )
    )
    mapped = mapping.apply(
        client(Aliases=[{"Given": "Ada"}, {"Given": "x  y"}, "not a row"]), SHELTER
    )
    assert mapped.resources[0].resource["name"] == [{"given": ["Ada"]}]
    assert [(p.place, p.reason) for p in mapped.problems] == [
        (
            Place(file="Client.csv", row=7, column="Given", field="Aliases[1].Given"),
            "Given: is not a code (no inner runs of spaces)",
        ),
        (Place(file="Client.csv", row=7, field="Aliases[2]"), "Aliases: row is not a record"),
    ]


# --- JSONata ---------------------------------------------------------------------------------


def test_an_expression_that_fails_at_run_time_is_a_problem_not_a_crash() -> None:
    # jsonata's own error message quotes the value ("could not convert string to float: ...").
    mapping = compile_spec(
        spec({**IDENTIFIER, "birthDate": {"$expr": "$string($number(FirstName))"}})
    )
    mapped = mapping.apply(client(FirstName=SECRET), SHELTER)
    assert [p.as_json() for p in mapped.problems] == [
        {
            "place": {"file": "Client.csv", "row": 7},
            "reason": "expression failed (ValueError)",
            "element": "Patient.birthDate",
            "blocking": False,
        }
    ]
    assert len(mapped.resources) == 1
    assert SECRET not in dumps(mapped.as_json())


def test_a_jsonata_error_code_is_kept_and_blocks_a_required_element() -> None:
    mapping = compile_spec(
        spec({**IDENTIFIER, "gender": {"$expr": '$substring(FirstName, "two")', "$required": True}})
    )
    mapped = mapping.apply(client(FirstName=SECRET), SHELTER)
    assert mapped.resources == []
    [problem] = mapped.problems
    assert problem.blocking
    assert problem.reason.startswith("expression failed (T")
    assert SECRET not in problem.reason


def test_an_expression_over_a_field_gets_its_trimmed_value_and_names_it() -> None:
    mapping = compile_spec(
        spec(
            {**IDENTIFIER, "birthDate": {"$field": "Year", "$expr": '$ & "-01-01"', "$as": "date"}}
        )
    )
    assert (
        mapping.apply(client(Year=" 1990 "), SHELTER).resources[0].resource["birthDate"]
        == "1990-01-01"
    )
    mapped = mapping.apply(client(Year="nineteen"), SHELTER)
    assert [p.reason for p in mapped.problems] == ["Year: is not a date (yyyy-mm-dd)"]


def test_expressions_see_the_context_but_never_the_never_mapped_fields() -> None:
    mapping = compile_spec(
        spec({**IDENTIFIER, "gender": {"$expr": "$string($) & $context.partner_id", "$as": "raw"}})
    )
    patient = mapping.apply(client(SSN="078051120", FirstName="Ada"), SHELTER).resources[0].resource
    assert "078051120" not in dumps(patient)
    assert "Ada" in patient["gender"]
    assert patient["gender"].endswith("riverside-shelter")


def test_an_expression_list_in_an_array_gives_items() -> None:
    mapping = compile_spec(
        spec({**IDENTIFIER, "name": [{"given": [{"$expr": '$split(Given, " ")'}]}]})
    )
    patient = mapping.apply(client(Given="Ada  Augusta"), SHELTER).resources[0].resource
    assert patient["name"] == [{"given": ["Ada", "Augusta"]}]


def test_a_condition_expression_that_fails_is_false_and_a_problem() -> None:
    mapping = compile_spec(
        spec({**IDENTIFIER, "gender": {"$const": "female", "$when": {"expr": "$number(Sex) = 0"}}})
    )
    mapped = mapping.apply(client(Sex=SECRET), SHELTER)
    assert "gender" not in mapped.resources[0].resource
    assert [p.reason for p in mapped.problems] == ["condition failed (ValueError)"]


# --- conditions, alternatives, splits --------------------------------------------------------


def test_list_conditions_hold_when_any_row_holds() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "gender": {"$const": "female", "$when": {"field": "Rows[].Flag", "equals": "1"}},
            }
        )
    )
    assert (
        "gender"
        in mapping.apply(client(Rows=[{"Flag": "0"}, {"Flag": " 1"}]), SHELTER)
        .resources[0]
        .resource
    )
    assert (
        "gender"
        not in mapping.apply(client(Rows=[{"Flag": "0"}, {}]), SHELTER).resources[0].resource
    )
    assert "gender" not in mapping.apply(client(Rows="1"), SHELTER).resources[0].resource


def test_first_takes_the_first_alternative_that_gives_a_value() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "birthDate": {
                    "$first": [
                        {"$field": "DOB", "$as": "date"},
                        {"$field": "Created", "$as": "date"},
                    ]
                },
            }
        )
    )
    assert (
        mapping.apply(client(Created="2020-01-02 10:00:00"), SHELTER)
        .resources[0]
        .resource["birthDate"]
        == "2020-01-02"
    )
    assert (
        mapping.apply(client(DOB="1990-01-01", Created="2020-01-02"), SHELTER)
        .resources[0]
        .resource["birthDate"]
        == "1990-01-01"
    )


def test_split_maps_each_part_and_a_bad_part_names_its_position() -> None:
    mapping = compile_spec(
        spec(
            {**IDENTIFIER, "name": [{"given": [{"$field": "Names", "$split": ";", "$as": "code"}]}]}
        )
    )
    mapped = mapping.apply(client(Names="Ada; ;Augusta;x  y"), SHELTER)
    assert mapped.resources[0].resource["name"] == [{"given": ["Ada", "Augusta"]}]
    assert [(p.place.field, p.reason) for p in mapped.problems] == [
        ("Names[3]", "Names: is not a code (no inner runs of spaces)")
    ]


# --- labels, references, versions --------------------------------------------------------------


def test_a_code_with_a_label_writes_it_to_meta_security() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "extension": [
                    {
                        "url": {"$const": "urn:x:fact"},
                        "valueCoding": {"$const": "dv-survivor", "$table": "hmis-safety-facts"},
                    }
                ],
            }
        )
    )
    patient = mapping.apply(client(), SHELTER).resources[0].resource
    assert patient["meta"]["security"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "SDV",
            "display": "sexual assault, abuse, or domestic violence information sensitivity",
        }
    ]


def test_a_code_left_out_by_its_condition_labels_nothing() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "extension": [
                    {
                        "$when": {"field": "Flag", "equals": "1"},
                        "url": {"$const": "urn:x:fact"},
                        "valueCoding": {"$const": "dv-survivor", "$table": "hmis-safety-facts"},
                    }
                ],
            }
        )
    )
    assert "meta" not in mapping.apply(client(Flag="0"), SHELTER).resources[0].resource


def test_references_to_mapped_records_are_placeholders_and_to_the_partner_local() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "managingOrganization": {"$partner_ref": True},
                "link": [
                    {
                        "other": {
                            "$field": "OtherID",
                            "$source_ref": {"resourceType": "Patient", "record_type": "Client"},
                        },
                        "type": {"$const": "seealso"},
                    }
                ],
                "generalPractitioner": [{"$field": "ClinicID", "$local_ref": "Organization"}],
            }
        )
    )
    patient = (
        mapping.apply(client(OtherID="CL 9:a", ClinicID="harbor-clinic"), SHELTER)
        .resources[0]
        .resource
    )
    assert patient["managingOrganization"] == {"reference": "Organization/riverside-shelter"}
    assert patient["link"][0]["other"] == {
        "reference": "urn:care-gateway:source:Patient:Client:CL%209%3Aa"
    }
    assert patient["generalPractitioner"] == [{"reference": "Organization/harbor-clinic"}]
    bad = mapping.apply(client(ClinicID="../Patient/1"), SHELTER)
    assert [p.reason for p in bad.problems] == ["ClinicID: is not a FHIR id"]


def test_a_record_of_an_unsupported_source_version_maps_to_nothing() -> None:
    mapping = compile_spec(spec(IDENTIFIER))
    mapped = mapping.apply(
        record("Client", "CL-1", {"PersonalID": "CL-1"}, version="FY2022"), SHELTER
    )
    assert mapped.resources == []
    assert [(p.reason, p.blocking) for p in mapped.problems] == [
        ("source version is not one this mapping supports", True)
    ]


def test_a_record_of_another_type_is_refused_by_a_spec() -> None:
    mapping = compile_spec(spec(IDENTIFIER))
    mapped = mapping.apply(record("Enrollment", "EN-1", {"PersonalID": "CL-1"}), SHELTER)
    assert mapped.resources == []
    assert mapped.problems[0].reason == "record is not a hmis-csv Client"


def test_a_record_type_without_a_spec_is_a_blocking_problem() -> None:
    mapped = MappingSet([compile_spec(spec(IDENTIFIER))]).apply(
        record("Assessment", "A-1", {}), SHELTER
    )
    assert mapped.resources == []
    assert mapped.problems[0].reason == "no mapping for hmis-csv record type Assessment"


def test_fields_that_are_not_a_mapping_never_crash_the_mapping() -> None:
    mapping = compile_spec(spec(IDENTIFIER))
    mapped = mapping.apply(record("Client", "CL-1", ["PersonalID"]), SHELTER)  # type: ignore[arg-type]
    assert mapped.resources == []
    assert mapped.problems[0].blocking


def test_each_record_gets_its_own_copy_of_constant_elements() -> None:
    mapping = compile_spec(
        spec(
            {
                **IDENTIFIER,
                "maritalStatus": {"$const": {"coding": [{"system": "urn:x", "code": "U"}]}},
            }
        )
    )
    first = mapping.apply(client(), SHELTER).resources[0].resource
    first["maritalStatus"]["coding"][0]["code"] = "CHANGED"
    second = mapping.apply(client(), SHELTER).resources[0].resource
    assert second["maritalStatus"] == {"coding": [{"system": "urn:x", "code": "U"}]}


def test_the_mapping_version_names_the_spec_version_and_hashes_spec_and_tables() -> None:
    doc = spec(
        {**IDENTIFIER, "gender": {"$field": "Sex", "$table": "hmis-sex-gender", "$output": "code"}}
    )
    docs = {"hmis-sex-gender": {"name": "hmis-sex-gender", "codes": [{"value": "0"}]}}
    first = compile_document(doc, schema=schema(), tables=tables(), table_docs=docs).version
    changed_table = {"hmis-sex-gender": {"name": "hmis-sex-gender", "codes": [{"value": "1"}]}}
    second = compile_document(
        doc, schema=schema(), tables=tables(), table_docs=changed_table
    ).version
    third = compile_document(
        {**doc, "description": "edited"}, schema=schema(), tables=tables(), table_docs=docs
    ).version
    assert first.version == second.version == "0.1.0"
    assert len({first.sha256, second.sha256, third.sha256}) == 3


def test_a_partner_id_that_is_not_a_fhir_id_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError, match="partner_id is not a FHIR id") as raised:
        MappingContext(partner_id="riverside shelter:x", partner_kind="shelter")
    assert "riverside shelter" not in str(raised.value)


# --- placeholders ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record_type", "source_id", "text"),
    [
        ("Client", "CL-20417", "urn:care-gateway:source:Patient:Client:CL-20417"),
        ("Client", "4711:a/b#c", "urn:care-gateway:source:Patient:Client:4711%3Aa%2Fb%23c"),
        ("Client", "Ñandú 7", "urn:care-gateway:source:Patient:Client:%C3%91and%C3%BA%207"),
        (
            "Release Of Info",
            "x_y.z~1",
            "urn:care-gateway:source:Patient:Release%20Of%20Info:x_y.z~1",
        ),
    ],
)
def test_placeholders_escape_their_parts_and_parse_back(
    record_type: str, source_id: str, text: str
) -> None:
    assert source_reference("Patient", record_type, source_id) == text
    assert parse_source_reference(text) == SourceKey("Patient", record_type, source_id)


@pytest.mark.parametrize(
    "text",
    [
        "urn:care-gateway:source:Patient:Client:4711%3aa",  # lower-case hex: not canonical
        "urn:care-gateway:source:Patient:Client:4711:a",  # an unescaped colon
        "urn:care-gateway:source:patient:Client:1",  # not a resource type
        "urn:care-gateway:source:Patient:Client:",  # empty id
        "urn:care-gateway:source:Patient:Client",
        "Patient/1",
        "urn:care-gateway:source:Patient:Client:%FF",  # not UTF-8
        42,
    ],
)
def test_only_canonical_placeholders_parse(text: Any) -> None:
    assert parse_source_reference(text) is None


def test_a_placeholder_part_that_cannot_be_written_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="source_id is empty"):
        source_reference("Patient", "Client", "")
    with pytest.raises(ValueError, match="resource_type"):
        source_reference("patient", "Client", "1")


def test_rewrite_placeholders_replaces_resolved_references_only() -> None:
    doc = {
        "subject": {"reference": source_reference("Patient", "Client", "CL-1")},
        "supportingInfo": [
            {"reference": source_reference("EpisodeOfCare", "Enrollment", "EN-1")},
            {"reference": "Organization/riverside-shelter"},
        ],
    }
    original = copy.deepcopy(doc)
    out = rewrite_placeholders(
        doc, lambda key: "Patient/p1" if key.resource_type == "Patient" else None
    )
    assert out["subject"] == {"reference": "Patient/p1"}
    assert (
        out["supportingInfo"] == original["supportingInfo"]
    )  # unresolved: left to fail validation
    assert doc == original


def test_table_documents_refuse_a_value_listed_twice() -> None:
    with pytest.raises(ValueError, match=r"codes\[1\]: value is listed twice"):
        table_from_dict({"name": "t", "codes": [{"value": "1"}, {"value": "1"}]})
