"""The partners file: what loads, what stops start-up (naming the line and the field, never the
key material), the demo placeholder, demo key generation, and partner Organizations."""

from __future__ import annotations

import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.clock import FrozenClock
from gateway.errors import NotFound
from gateway.partners import (
    DEMO_KEYS_PLACEHOLDER,
    PartnerDirectory,
    PartnersFileError,
    demo_key_path,
    ensure_organizations,
    load_partners,
    partners_for,
    public_jwk,
    write_demo_partners,
)
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from tests.conftest import START
from tests.support.valid import valid

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "partners.yaml"
SHELTER_KEY = ec.generate_private_key(ec.SECP384R1())
HOSPITAL_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def shelter(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": "riverside-shelter",
        "name": "Riverside Safe Haven",
        "kind": "shelter",
        "organization": "Organization/riverside-shelter",
        "jwks": {"keys": [public_jwk(SHELTER_KEY)]},
        "scopes": ["system/*.cruds"],
        "purposes": ["COC", "TREAT"],
        "default_purpose": "COC",
    }
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


def hospital(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": "st-marys-hospital",
        "name": "St. Mary's Hospital",
        "kind": "hospital",
        "organization": "Organization/st-marys-hospital",
        "jwks_url": "https://ehr.stmarys.example/.well-known/jwks.json",
        "scopes": ["system/CarePlan.rs", "system/ServiceRequest.cruds", "system/Task.cruds"],
        "purposes": ["TREAT", "ETREAT", "BTG"],
        "default_purpose": "TREAT",
        "endpoint": "https://ehr.stmarys.example/fhir",
        "hl7_sending_facility": "STMARYS",
    }
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


def write(tmp_path: Path, *partners: dict[str, Any]) -> Path:
    path = tmp_path / "partners.yaml"
    path.write_text(yaml.safe_dump({"partners": list(partners)}, sort_keys=False))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(PartnersFileError) as caught:
        load_partners(path)
    return caught.value.problems


def line_of(path: Path, text: str, occurrence: int = 1) -> int:
    seen = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{text!r} not in the file")


def test_a_valid_file_loads_and_looks_partners_up_three_ways(tmp_path: Path) -> None:
    directory = load_partners(write(tmp_path, shelter(), hospital()))
    assert [p.id for p in directory] == ["riverside-shelter", "st-marys-hospital"]
    by_id = directory.by_client_id("riverside-shelter")
    assert by_id is not None
    assert by_id.kind == "shelter"
    assert by_id.inline_keys[0]["kid"] == public_jwk(SHELTER_KEY)["kid"]
    assert directory.by_organization("Organization/st-marys-hospital") is not None
    facility = directory.by_hl7_facility("STMARYS")
    assert facility is not None
    assert facility.id == "st-marys-hospital"
    assert directory.by_client_id("eastside-clinic") is None
    assert directory.by_hl7_facility("UNKNOWN") is None


def test_an_rsa_partner_key_loads(tmp_path: Path) -> None:
    entry = hospital(jwks={"keys": [public_jwk(HOSPITAL_KEY)]}, jwks_url=None)
    partner = load_partners(write(tmp_path, entry)).by_client_id("st-marys-hospital")
    assert partner is not None
    assert partner.inline_keys[0]["kty"] == "RSA"


def test_a_bad_kind_names_the_line_and_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, shelter(), hospital(kind="pharmacy"))
    [problem] = problems(path)
    line = line_of(path, "kind: pharmacy")
    assert problem.startswith(f"{path}:{line}: partners[1].kind: must be one of")
    assert "'legal-aid'" in problem


def test_a_missing_field_points_at_its_partner(tmp_path: Path) -> None:
    path = write(tmp_path, shelter(), hospital(default_purpose=None))
    [problem] = problems(path)
    assert problem == f"{path}:{line_of(path, 'id: st-marys-hospital')}: " + (
        "partners[1].default_purpose: is required"
    )


@pytest.mark.parametrize(
    ("changes", "field", "why"),
    [
        ({"id": "Riverside Shelter"}, "partners[0].id", "must match"),
        ({"organization": "Riverside"}, "partners[0].organization", "must match"),
        ({"default_purpose": "HLEGAL"}, "partners[0].default_purpose", "one of this partner's"),
        ({"purposes": ["COC", "TREATMENT"]}, "partners[0].purposes", "purposes[1] is not a v3"),
        ({"scopes": ["system/*.everything"]}, "partners[0].scopes", "scopes[0] is not a SMART"),
        ({"endpoint": "ftp://files.example"}, "partners[0].endpoint", "http(s) URL"),
        ({"website": "https://x.example"}, "partners[0].website", "is not a known field"),
        ({"name": 42}, "partners[0].name", "valid string"),
    ],
)
def test_each_bad_field_is_named(
    tmp_path: Path, changes: dict[str, Any], field: str, why: str
) -> None:
    [problem] = problems(write(tmp_path, shelter(**changes)))
    assert f": {field}: " in problem
    assert why in problem


def test_jwks_and_jwks_url_are_exclusive_and_one_is_required(tmp_path: Path) -> None:
    both = hospital(jwks={"keys": [public_jwk(SHELTER_KEY)]})
    [problem] = problems(write(tmp_path, both))
    assert "partners[0].jwks: give exactly one of jwks or jwks_url" in problem
    [problem] = problems(write(tmp_path, hospital(jwks_url=None)))
    assert "give exactly one of jwks or jwks_url" in problem


def test_jwks_url_must_be_https_off_loopback(tmp_path: Path) -> None:
    [problem] = problems(write(tmp_path, hospital(jwks_url="http://ehr.stmarys.example/jwks")))
    assert "partners[0].jwks_url: jwks_url must be https" in problem
    loopback = hospital(jwks_url="http://127.0.0.1:9010/jwks.json")
    assert load_partners(write(tmp_path, loopback)).by_client_id("st-marys-hospital")


def test_ids_organizations_and_hl7_facilities_are_unique(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        hospital(),
        hospital(organization="Organization/stmarys-west"),
        shelter(organization="Organization/st-marys-hospital", hl7_sending_facility="STMARYS"),
    )
    found = problems(path)
    assert any("partners[1].id: repeats the value of partners[0]" in p for p in found)
    assert any("partners[2].organization: repeats the value of partners[0]" in p for p in found)
    assert any(
        "partners[2].hl7_sending_facility: repeats the value of partners[0]" in p for p in found
    )


def test_a_private_key_in_the_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    jwk = public_jwk(SHELTER_KEY)
    private_value = ec.generate_private_key(ec.SECP384R1()).private_numbers().private_value
    leaked = {**jwk, "d": f"{private_value:x}"}
    path = write(tmp_path, shelter(jwks={"keys": [leaked]}))
    [problem] = problems(path)
    assert "partners[0].jwks: keys: key 0: private key material is not allowed" in problem
    assert leaked["d"] not in problem
    assert jwk["x"] not in problem


@pytest.mark.parametrize(
    ("jwk", "why"),
    [
        ({"kty": "oct", "k": "c2VjcmV0"}, "private key material"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "abc"}, "kty must be EC"),
        ({**public_jwk(ec.generate_private_key(ec.SECP256R1())), "alg": "ES256"}, "P-384"),
        (public_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "2048"),
        ({"kty": "EC", "crv": "P-384", "x": "not-a-point", "y": "nope"}, "does not parse"),
    ],
)
def test_keys_must_be_public_rs384_or_es384_signing_keys(
    tmp_path: Path, jwk: dict[str, Any], why: str
) -> None:
    [problem] = problems(write(tmp_path, shelter(jwks={"keys": [jwk]})))
    assert "partners[0].jwks" in problem
    assert why in problem


def test_yaml_errors_aliases_and_duplicate_keys_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "partners.yaml"
    path.write_text("partners:\n  - id: riverside-shelter\n    name: [unclosed\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:4: not valid YAML")

    path.write_text(
        textwrap.dedent(
            """\
            partners:
              - &shelter
                id: riverside-shelter
              - *shelter
            """
        )
    )
    assert any("anchors and aliases are not allowed" in p for p in problems(path))

    path.write_text("partners:\n  - id: riverside-shelter\n    kind: shelter\n    kind: admin\n")
    assert f"{path}:4: key 'kind' appears twice" in problems(path)

    path.write_text("partners:\n  - ? [id, name]\n    : riverside-shelter\n")
    assert f"{path}:2: mapping keys must be plain names" in problems(path)


def test_an_empty_or_unreadable_file_is_a_start_up_error(tmp_path: Path) -> None:
    path = tmp_path / "partners.yaml"
    path.write_text("")
    assert problems(path) == [f"{path}:1: the partners file is empty"]
    assert "cannot read" in problems(tmp_path / "absent.yaml")[0]
    path.write_text("- just\n- a list\n")
    assert any("(document)" in p for p in problems(path))


def test_the_example_network_is_refused_outside_demo_mode() -> None:
    found = problems(EXAMPLE)
    assert len(found) == 6
    assert all(f"jwks: is the demo placeholder {DEMO_KEYS_PLACEHOLDER!r}" in p for p in found)
    with pytest.raises(PartnersFileError):
        partners_for(Settings(partners_file=EXAMPLE, demo=False))


def test_demo_mode_generates_keys_and_a_loadable_partners_file(tmp_path: Path) -> None:
    keys_dir = tmp_path / "var" / "keys"
    settings = Settings(partners_file=EXAMPLE, keys_dir=keys_dir, demo=True)
    directory = partners_for(settings)
    out = tmp_path / "var" / "partners.demo.yaml"
    assert out.exists()
    assert {p.id for p in directory} == {
        "riverside-shelter", "northside-legal-aid", "harbor-clinic", "st-marys-hospital",
        "compliance-office", "gateway-admin",
    }  # fmt: skip
    hospital_partner = directory.by_hl7_facility("STMARYS")
    assert hospital_partner is not None
    assert hospital_partner.name == "St. Mary's Hospital"
    for partner in directory:
        key_file = demo_key_path(keys_dir, partner.id)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert "PRIVATE KEY" not in out.read_text()
        assert partner.inline_keys[0]["crv"] == "P-384"
    assert stat.S_IMODE((keys_dir / "demo-partners").stat().st_mode) == 0o700
    # A second run keeps the same keys (clients minted against them keep working).
    again = load_partners(write_demo_partners(EXAMPLE, keys_dir, out))
    assert [p.inline_keys for p in again] == [p.inline_keys for p in directory]


def test_legal_aid_and_compliance_get_the_purposes_the_network_expects(tmp_path: Path) -> None:
    directory = partners_for(Settings(partners_file=EXAMPLE, keys_dir=tmp_path / "keys", demo=True))
    legal = directory.by_client_id("northside-legal-aid")
    compliance = directory.by_client_id("compliance-office")
    assert legal is not None
    assert compliance is not None
    assert set(legal.purposes) == {"HLEGAL", "COC"}
    assert "HOPERAT" in compliance.purposes
    assert "system/AuditEvent.rs" in compliance.scopes


def test_ensure_organizations_creates_only_the_absent_ones(tmp_path: Path) -> None:
    store = MemoryStore(FrozenClock(START))
    directory = PartnerDirectory(load_partners(write(tmp_path, shelter(), hospital())))
    store.update(
        "Organization",
        "st-marys-hospital",
        valid(
            {"resourceType": "Organization", "id": "st-marys-hospital", "name": "St. Mary's (EHR)"}
        ),
        if_match=None,
    )
    assert ensure_organizations(store, directory) == ["Organization/riverside-shelter"]
    created = store.read("Organization", "riverside-shelter")
    assert created.body is not None
    assert ensure_organizations(store, directory) == []
    kept = store.read("Organization", "st-marys-hospital")
    assert kept.version_id == 1
    with pytest.raises(NotFound):
        store.read("Organization", "northside-legal-aid")
