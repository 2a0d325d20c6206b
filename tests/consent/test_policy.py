"""The shipped network policy validates; a bad one fails naming the file and the field."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.consent.labels import load_label_tables
from gateway.consent.policy import PolicyError, load_policy, policy_from_dict

POLICIES = Path(__file__).resolve().parents[2] / "consent_policies"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    for name in ("network.yaml", "labels.yaml", "schema.json"):
        shutil.copy(POLICIES / name, tmp_path / name)
    return tmp_path


def edit(directory: Path, file: str, change: object) -> None:
    path = directory / file
    doc = yaml.safe_load(path.read_text())
    change(doc)  # type: ignore[operator]
    path.write_text(yaml.safe_dump(doc))


def test_shipped_policy_validates_with_the_contract_defaults() -> None:
    policy = load_policy(POLICIES)
    assert policy.explicit_labels == {"ETH", "PSY", "SDV", "LOCIS"}
    assert policy.shelter_kinds == {"shelter"}
    assert policy.shelter_max_days == 365
    assert policy.kinds["compliance"].resource_types == frozenset()
    assert policy.kinds["admin"].resource_types == frozenset()
    assert "PSY" in policy.kinds["legal-aid"].required_labels
    assert policy.emergency[0].purposes == {"ETREAT", "BTG"}
    assert policy.emergency[0].partner_kinds == {"hospital", "clinic"}
    assert {r.id for r in policy.redactions} >= {
        "patient-contact-details",
        "part2-redisclosure-notice",
    }


def test_shipped_label_tables_validate() -> None:
    tables = load_label_tables(POLICIES)
    assert tables.sensitivity_system == "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def test_unknown_resource_type_names_file_and_field(policies: Path) -> None:
    edit(
        policies, "network.yaml", lambda d: d["kinds"]["legal-aid"]["resource_types"].append("Foo")
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(policies)
    message = str(caught.value)
    assert message.startswith("network.yaml: kinds.legal-aid.resource_types[5]: ")
    assert "'Foo'" in message
    assert caught.value.file == "network.yaml"


def test_missing_shelter_maximum_names_the_field(policies: Path) -> None:
    edit(policies, "network.yaml", lambda d: d["shelter"].pop("max_consent_days"))
    with pytest.raises(
        PolicyError, match=r"network.yaml: shelter: 'max_consent_days' is a required"
    ):
        load_policy(policies)


def test_wrong_type_names_the_field(policies: Path) -> None:
    edit(policies, "network.yaml", lambda d: d["shelter"].update(max_consent_days="a year"))
    with pytest.raises(
        PolicyError, match=r"network.yaml: shelter.max_consent_days: 'a year' is not"
    ):
        load_policy(policies)


def test_misspelt_key_is_refused_not_ignored(policies: Path) -> None:
    edit(policies, "network.yaml", lambda d: d["kinds"]["clinic"].update(resource_type=["Patient"]))
    with pytest.raises(PolicyError, match=r"network.yaml: kinds.clinic: .*'resource_type'"):
        load_policy(policies)


def test_unknown_partner_kind_is_refused(policies: Path) -> None:
    edit(policies, "network.yaml", lambda d: d["kinds"].update(researcher={"resource_types": []}))
    with pytest.raises(PolicyError, match=r"network.yaml: kinds: 'researcher'"):
        load_policy(policies)


def test_redaction_without_elements_names_the_rule(policies: Path) -> None:
    edit(policies, "network.yaml", lambda d: d["redactions"][0].pop("elements"))
    with pytest.raises(
        PolicyError, match=r"network.yaml: redactions\[0\]: 'elements' is a required"
    ):
        load_policy(policies)


def test_duplicate_rule_id_names_the_field(policies: Path) -> None:
    appended: list[int] = []

    def duplicate_first(doc: dict[str, Any]) -> None:
        doc["redactions"].append(dict(doc["redactions"][0]))
        appended.append(len(doc["redactions"]) - 1)

    edit(policies, "network.yaml", duplicate_first)
    with pytest.raises(PolicyError, match=r"network.yaml: redactions\[(\d+)\].id: duplicate") as e:
        load_policy(policies)
    assert f"redactions[{appended[0]}].id" in str(e.value)


def test_yaml_syntax_error_names_file_and_line(policies: Path) -> None:
    (policies / "network.yaml").write_text("version: 1\nkinds: [unclosed\n")
    with pytest.raises(PolicyError, match=r"network.yaml: line \d+: not valid YAML"):
        load_policy(policies)


def test_missing_policy_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"network.yaml: cannot read"):
        load_policy(tmp_path)


def test_bad_label_table_names_file_and_field(policies: Path) -> None:
    edit(policies, "labels.yaml", lambda d: d["sensitivity"]["ETH"][0].pop("system"))
    with pytest.raises(
        PolicyError, match=r"labels.yaml: sensitivity.ETH\[0\]: 'system' is a required"
    ):
        load_label_tables(policies)


def test_a_policy_without_consent_writing_lets_nobody_record_consents() -> None:
    doc = yaml.safe_load(Path("consent_policies/network.yaml").read_text())
    assert load_policy(Path("consent_policies")).consent_writers == {
        "shelter",
        "legal-aid",
        "clinic",
        "hospital",  # a hospital releases its own referrals
    }
    del doc["consent_writing"]
    assert policy_from_dict(doc).consent_writers == frozenset()
