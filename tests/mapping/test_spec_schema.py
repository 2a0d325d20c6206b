"""Specs and code tables are data, validated at load: a malformed one never loads, and nothing in
them runs as code."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.mapping import MappingSpecError, load_mappings
from gateway.mapping.loader import parse_yaml, schema_problems
from tests.mapping.support import MAPPINGS, SHELTER, compile_spec, record, schema

VALID: dict[str, Any] = {
    "system": "hmis-csv",
    "record_type": "Client",
    "version": "0.1.0",
    "source_versions": ["FY2026"],
    "never_map": ["SSN"],
    "resources": [
        {
            "resourceType": "Patient",
            "elements": {
                "identifier": [
                    {
                        "system": {"$const": "urn:x"},
                        "value": {"$field": "PersonalID", "$required": True},
                    }
                ]
            },
        }
    ],
}


def with_change(path: list[Any], value: Any = None, *, delete: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def refused(doc: Any) -> list[str]:
    with pytest.raises(MappingSpecError) as raised:
        compile_spec(doc)
    return raised.value.problems


def test_the_valid_example_compiles() -> None:
    mapped = compile_spec(VALID).apply(record("Client", "CL-1", {"PersonalID": "CL-1"}), SHELTER)
    assert mapped.resources[0].resource["identifier"] == [{"system": "urn:x", "value": "CL-1"}]


@pytest.mark.parametrize(
    "key", ["system", "record_type", "version", "source_versions", "never_map", "resources"]
)
def test_a_spec_missing_a_required_key_is_refused_naming_it(key: str) -> None:
    [problem] = refused(with_change([key], delete=True))
    assert problem == f"<spec>: (top level): '{key}' is a required property"


@pytest.mark.parametrize("key", ["resourceType", "elements"])
def test_a_resource_missing_a_required_key_is_refused(key: str) -> None:
    [problem] = refused(with_change(["resources", 0, key], delete=True))
    assert f"'{key}' is a required property" in problem


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (["python"], "import os", "(top level)"),  # an unknown top-level key
        (["resources", 0, "profile"], "x", "resources[0]"),  # an unknown resource key
        (
            ["resources", 0, "elements", "identifier", 0, "value", "$eval"],
            "1",
            "resources[0].elements.identifier[0].value",
        ),
        (["resources", 0, "elements", "birth-date"], {"$field": "DOB"}, "resources[0].elements"),
        (
            ["resources", 0, "elements", "gender"],
            {"$field": "Sex", "$const": "x"},
            "resources[0].elements.gender",
        ),
        (
            ["resources", 0, "elements", "gender"],
            {"$field": "Sex", "$when": {"field": "X", "matches": "1"}},
            "resources[0].elements.gender.$when",
        ),
        (
            ["resources", 0, "elements", "gender"],
            {"$field": "Sex", "$as": "python"},
            "resources[0].elements.gender.$as",
        ),
        (["version"], "latest", "version"),
        (["source_versions"], [], "source_versions"),
        (["resources"], [], "resources"),
        (["resources", 0, "resourceType"], "patient", "resources[0].resourceType"),
        (
            ["resources", 0, "elements", "gender"],
            {"$field": "os.system('rm -rf /')"},
            "resources[0].elements.gender",
        ),
    ],
)
def test_a_malformed_spec_is_refused_naming_where(path: list[Any], value: Any, where: str) -> None:
    problems = refused(with_change(path, value))
    assert any(p.startswith(f"<spec>: {where}") for p in problems), problems


def test_python_looking_values_are_only_strings() -> None:
    doc = with_change(
        ["resources", 0, "elements", "gender"], {"$const": "__import__('os').system('echo pwned')"}
    )
    doc["resources"][0]["elements"]["birthDate"] = {"$field": "os.system"}  # a field path, absent
    patient = compile_spec(doc).apply(record("Client", "CL-1", {"PersonalID": "CL-1"}), SHELTER)
    assert patient.resources[0].resource["gender"] == "__import__('os').system('echo pwned')"
    assert "birthDate" not in patient.resources[0].resource


def test_yaml_tags_that_build_python_objects_are_refused() -> None:
    with pytest.raises(MappingSpecError, match="could not determine a constructor"):
        parse_yaml("version: !!python/object/apply:os.system ['echo pwned']\n", "Client.yaml")


def test_a_key_given_twice_is_refused_with_its_line() -> None:
    with pytest.raises(MappingSpecError) as raised:
        parse_yaml("gender: {$const: female}\nname: x\ngender: {$const: male}\n", "Client.yaml")
    assert raised.value.problems == ["Client.yaml: line 3: a key is given twice"]


def test_yaml_one_one_booleans_are_not_codes() -> None:
    table = parse_yaml("name: t\ndescription: d\ncodes:\n  - {value: 'x', code: off}\n", "t.yaml")
    assert schema_problems(table, schema(), file="t.yaml", definition="codeTable") == [
        "t.yaml: codes[0].code: False is not of type 'string'"
    ]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"name": "t", "description": "d", "codes": [{"value": 0}]},
            "codes[0].value: 0 is not of type 'string'",
        ),
        (
            {"name": "t", "description": "d", "codes": [{"value": "9", "omit": True, "code": "x"}]},
            "codes[0]",
        ),
        (
            {"name": "t", "description": "d", "codes": [{"value": "1", "label": "SECRET"}]},
            "codes[0].label",
        ),
        ({"name": "t", "codes": [{"value": "1"}]}, "'description' is a required property"),
        ({"name": "t", "description": "d", "codes": [{"value": "1", "colour": "red"}]}, "codes[0]"),
    ],
)
def test_a_malformed_code_table_is_refused(table: dict[str, Any], message: str) -> None:
    problems = schema_problems(table, schema(), file="t.yaml", definition="codeTable")
    assert problems
    assert message in problems[0]


# --- meaning, checked when compiling ---------------------------------------------------------


def gender(value: dict[str, Any]) -> dict[str, Any]:
    return with_change(["resources", 0, "elements", "gender"], value)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (gender({"$field": "SSN"}), "reads a field listed in never_map"),
        (
            gender({"$fields": ["PersonalID", "SSN"], "$table": "hmis-service-type"}),
            "reads a field listed in never_map",
        ),
        (
            gender({"$const": "x", "$when": {"field": "SSN", "present": True}}),
            "reads a field listed in never_map",
        ),
        (gender({"$expr": "$substring(SSN, 5)"}), "expression names a field listed in never_map"),
        (gender({"$expr": "$eval('1')"}), "may not"),
        (gender({"$expr": "$now()"}), "may not"),
        (gender({"$expr": "(function($x){$x})(1)"}), "may not"),
        (gender({"$expr": "Woman = "}), "expression is not valid JSONata"),
        (gender({"$field": "Sex", "$table": "no-such-table"}), "no code table named no-such-table"),
        (
            gender({"$const": "not-a-fact", "$table": "hmis-safety-facts"}),
            "is not a value of its code table",
        ),
        (
            gender({"$field": "Sex", "$when": {"version": "FY2025"}}),
            "names a source version the spec does not declare",
        ),
        (gender({"$template": "urn:{FirstName}"}), "a template may name only"),
        (gender({"$field": "Sex", "$split": ";"}), "$split gives several items"),
        (gender({"$field": "Sex", "$output": "code"}), "only means something with $table"),
        (gender({"$const": ""}), "is empty"),
        (gender({"$const": "a\x07b"}), "contains control characters"),
        (
            with_change(
                ["resources", 0, "elements", "contact"],
                {"$each": "Contacts", "name": {"text": {"$field": "N"}}},
            ),
            "$each gives several items",
        ),
        (
            with_change(
                ["resources", 0, "elements", "name"],
                [{"$needs": ["family"], "given": [{"$field": "F"}]}],
            ),
            "names an element the object does not have",
        ),
        (
            with_change(
                ["resources", 0, "elements", "name"], [{"$when": {"field": "F", "present": True}}]
            ),
            "needs at least one element",
        ),
    ],
)
def test_a_spec_that_means_something_it_may_not_is_refused(
    doc: dict[str, Any], message: str
) -> None:
    problems = refused(doc)
    assert any(message in p for p in problems), problems


def test_never_map_covers_rows_of_joined_lists() -> None:
    doc = copy.deepcopy(VALID)
    doc["never_map"] = ["CurrentLivingSituation[].LocationDetails"]
    doc["resources"][0]["elements"]["contact"] = [
        {"$each": "CurrentLivingSituation", "name": {"text": {"$field": "LocationDetails"}}}
    ]
    assert any("reads a field listed in never_map" in p for p in refused(doc))
    # iterating the rows is allowed; their never-mapped column is not there to read
    doc["resources"][0]["elements"]["contact"] = [
        {"$each": "CurrentLivingSituation", "name": {"text": {"$expr": "$string($)"}}}
    ]
    rows = [{"InformationDate": "2026-10-01", "LocationDetails": "under the Fifth St bridge"}]
    mapped = compile_spec(doc).apply(
        record("Client", "CL-1", {"PersonalID": "CL-1", "CurrentLivingSituation": rows}), SHELTER
    )
    text = json.dumps(mapped.as_json())
    assert "2026-10-01" in text
    assert "Fifth St" not in text


# --- the loader ----------------------------------------------------------------------------


def copy_mappings(tmp_path: Path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, target)
    return target


def test_the_shipped_mappings_load_and_declare_their_versions() -> None:
    loaded = load_mappings(MAPPINGS)
    assert sorted(v.record_type for v in loaded.versions if v.system == "hmis-csv") == [
        "Client",
        "Enrollment",
        "ReleaseOfInformation",
    ]
    assert {v.system for v in loaded.versions} >= {"hmis-csv", "fhir"}
    for version in loaded.versions:
        assert version.version
        assert len(version.sha256) == 64


def test_the_loader_reports_every_broken_file_by_name(tmp_path: Path) -> None:
    root = copy_mappings(tmp_path)
    client = root / "hmis-csv" / "Client.yaml"
    client.write_text(client.read_text(encoding="utf-8").replace("version: 1.0.0", "versio: 1.0.0"))
    (root / "hmis-csv" / "Enrollment.yaml").write_text("system: [unclosed\n")
    with pytest.raises(MappingSpecError) as raised:
        load_mappings(root)
    problems = raised.value.problems
    unexpected = "Additional properties are not allowed ('versio' was unexpected)"
    assert f"hmis-csv/Client.yaml: (top level): {unexpected}" in problems
    assert "hmis-csv/Client.yaml: (top level): 'version' is a required property" in problems
    assert any(p.startswith("hmis-csv/Enrollment.yaml: line 2:") for p in problems)


def test_a_spec_must_live_under_its_system_and_record_type(tmp_path: Path) -> None:
    root = copy_mappings(tmp_path)
    (root / "hmis-csv" / "Client.yaml").rename(root / "hmis-csv" / "Person.yaml")
    with pytest.raises(MappingSpecError, match=r"must be named <system>/<record_type>\.yaml"):
        load_mappings(root)


def test_a_code_table_must_be_named_after_its_file(tmp_path: Path) -> None:
    root = copy_mappings(tmp_path)
    (root / "codes" / "hmis-no-yes.yaml").rename(root / "codes" / "no-yes.yaml")
    with pytest.raises(MappingSpecError, match=r"codes/no-yes.yaml: name: must be the file name"):
        load_mappings(root)


def test_a_code_table_change_changes_the_content_hash_of_the_specs_using_it(tmp_path: Path) -> None:
    before = {v.record_type: v.sha256 for v in load_mappings(MAPPINGS).versions}
    root = copy_mappings(tmp_path)
    table = root / "codes" / "hmis-project-type.yaml"
    table.write_text(table.read_text(encoding="utf-8").replace('"Day Shelter"', '"Day shelter"'))
    after = {v.record_type: v.sha256 for v in load_mappings(root).versions}
    assert after["Enrollment"] != before["Enrollment"]
    assert after["Client"] == before["Client"]
