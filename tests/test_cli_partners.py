"""``gateway partners add|check|list``: onboarding a partner without hand-editing YAML.

What an operator relies on: a key in any format partners send becomes the JWK the token endpoint
verifies with (proved by getting a token from the real app with the matching private key); a
private key, an unknown kind, a repeated id or any entry the loader would refuse is refused in
one line, leaving the file byte for byte as it was; what is written keeps the other entries,
their comments and the file's permissions; ``check`` answers as ``serve`` would, naming lines
and fields, never values; ``list`` never shows key material."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from gateway.app import create_app
from gateway.clock import FrozenClock
from gateway.commands.partners import KIND_DEFAULTS, partners_app
from gateway.partners import PARTNER_KINDS, load_partners, mint_client_assertion, public_jwk
from gateway.store.sql import SqlStore
from tests.conftest import START
from tests.support.network import BASE, gateway_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "partners.yaml"
TOKEN_URL = f"{BASE}/auth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

SHELTER_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP384R1())
STRANGER_KEY = ec.generate_private_key(ec.SECP384R1())

runner = CliRunner()


def network_text() -> str:
    """A one-partner network as an operator keeps it: a header comment, a comment inside the
    entry, flow-style lists."""
    jwk = json.dumps(public_jwk(SHELTER_KEY))
    return (
        "# Our care network. Keep this comment.\n"
        "partners:\n"
        "  - id: riverside-shelter\n"
        "    name: Riverside Safe Haven\n"
        "    kind: shelter\n"
        "    organization: Organization/riverside-shelter\n"
        f"    jwks: {{keys: [{jwk}]}}\n"
        "    # The shelter reads and writes everything it contributes.\n"
        '    scopes: ["system/*.cruds"]\n'
        "    purposes: [COC, CAREMGT, TREAT]\n"
        "    default_purpose: COC\n"
        "    hl7_sending_facility: RIVERSIDE\n"
        "\n"
        "# Trailing note, also kept.\n"
    )


@pytest.fixture
def partners_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "network" / "partners.yaml"
    path.parent.mkdir()
    path.write_text(network_text())
    monkeypatch.setenv("GATEWAY_PARTNERS_FILE", str(path))
    monkeypatch.delenv("GATEWAY_DEMO", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.chdir(tmp_path)
    return path


def invoke(*args: str) -> Result:
    return runner.invoke(partners_app, list(args))


def entries(path: Path) -> list[dict[str, Any]]:
    partners = yaml.safe_load(path.read_text())["partners"]
    assert isinstance(partners, list)
    return partners


def entry(path: Path, partner_id: str) -> dict[str, Any]:
    return next(e for e in entries(path) if e["id"] == partner_id)


def key_file(directory: Path, name: str, data: bytes | str) -> str:
    path = directory / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def spki(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certificate(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, name: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(START + timedelta(days=365))
        .sign(key, hashes.SHA384())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def b64url_int(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_fixed(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


def thumbprint(members: dict[str, str]) -> str:
    """RFC 7638 section 3, written out here rather than borrowed from the code under test."""
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def expected_rsa_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    members = {"kty": "RSA", "n": b64url_int(numbers.n), "e": b64url_int(numbers.e)}
    return {**members, "kid": thumbprint(members), "use": "sig", "alg": "RS384"}


def expected_ec_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    members = {
        "kty": "EC",
        "crv": "P-384",
        "x": b64url_fixed(numbers.x, 48),
        "y": b64url_fixed(numbers.y, 48),
    }
    return {**members, "kid": thumbprint(members), "use": "sig", "alg": "ES384"}


def one_line(result: Result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def no_temporary_files(path: Path) -> bool:
    return sorted(p.name for p in path.parent.iterdir()) == [path.name]


# -- defaults ------------------------------------------------------------------------------------


def test_each_kind_gets_by_default_what_the_demo_network_gives_it() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())["partners"]
    assert sorted(KIND_DEFAULTS) == sorted(PARTNER_KINDS)
    assert sorted(e["kind"] for e in example) == sorted(PARTNER_KINDS)
    for demo in example:
        defaults = KIND_DEFAULTS[demo["kind"]]
        assert list(defaults.scopes) == demo["scopes"], demo["kind"]
        assert list(defaults.purposes) == demo["purposes"], demo["kind"]
        assert defaults.purposes[0] == demo["default_purpose"], demo["kind"]


@pytest.mark.parametrize("kind", PARTNER_KINDS)
def test_add_fills_in_the_organization_scopes_and_purposes_of_the_kind(
    partners_file: Path, tmp_path: Path, kind: str
) -> None:
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke("add", f"new-{kind}", "--kind", kind, "--name", "New Partner", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    added = entry(partners_file, f"new-{kind}")
    assert added["organization"] == f"Organization/new-{kind}"
    assert added["scopes"] == list(KIND_DEFAULTS[kind].scopes)
    assert added["purposes"] == list(KIND_DEFAULTS[kind].purposes)
    assert added["default_purpose"] == KIND_DEFAULTS[kind].purposes[0]
    assert "endpoint" not in added
    assert "victim_service_provider" not in added


def test_add_takes_every_field_from_its_options(partners_file: Path, tmp_path: Path) -> None:
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke(
        "add", "st-marys-hospital", "--kind", "hospital", "--name", "St. Mary's Hospital",
        "--jwks", jwks, "--scopes", "system/Patient.rs,system/Task.cruds",
        "--scopes", "system/ServiceRequest.cruds", "--purposes", "TREAT", "--purposes", "ETREAT",
        "--default-purpose", "ETREAT", "--endpoint", "https://ehr.stmarys.example/fhir",
        "--organization", "Organization/st-marys", "--hl7-sending-facility", "STMARYS",
        "--hl7-peers", "10.20.0.0/16,192.0.2.7",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    added = entry(partners_file, "st-marys-hospital")
    assert added == {
        "id": "st-marys-hospital",
        "name": "St. Mary's Hospital",
        "kind": "hospital",
        "organization": "Organization/st-marys",
        "jwks": {"keys": [expected_ec_jwk(EC_KEY)]},
        "scopes": ["system/Patient.rs", "system/Task.cruds", "system/ServiceRequest.cruds"],
        "purposes": ["TREAT", "ETREAT"],
        "default_purpose": "ETREAT",
        "endpoint": "https://ehr.stmarys.example/fhir",
        "hl7_sending_facility": "STMARYS",
        "hl7_peers": ["10.20.0.0/16", "192.0.2.7"],
    }
    partner = load_partners(partners_file).by_hl7_facility("STMARYS")
    assert partner is not None
    assert partner.sends_hl7_from("10.20.3.4")


def test_a_victim_service_provider_shelter_is_marked_so(
    partners_file: Path, tmp_path: Path
) -> None:
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke(
        "add", "safe-harbor", "--kind", "shelter", "--name", "Safe Harbor", "--jwks", jwks,
        "--victim-service-provider",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert entry(partners_file, "safe-harbor")["victim_service_provider"] is True


# -- the key formats -----------------------------------------------------------------------------


def test_a_jwks_file_is_taken_as_given(partners_file: Path, tmp_path: Path) -> None:
    keys = [public_jwk(EC_KEY), public_jwk(RSA_KEY)]
    jwks = key_file(tmp_path, "jwks.json", orjson.dumps({"keys": keys}))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    assert entry(partners_file, "harbor-clinic")["jwks"] == {"keys": keys}


def test_a_single_jwk_becomes_a_one_key_set(partners_file: Path, tmp_path: Path) -> None:
    jwk = public_jwk(RSA_KEY)
    jwks = key_file(tmp_path, "key.jwk", orjson.dumps(jwk))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    assert entry(partners_file, "harbor-clinic")["jwks"] == {"keys": [jwk]}


def test_a_jwk_without_kid_is_taken_with_a_note_about_assertions(
    partners_file: Path, tmp_path: Path
) -> None:
    jwk = {k: v for k, v in public_jwk(EC_KEY).items() if k != "kid"}
    jwks = key_file(tmp_path, "key.jwk", orjson.dumps(jwk))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    assert "no kid" in result.output
    assert entry(partners_file, "harbor-clinic")["jwks"] == {"keys": [jwk]}


RSA_PUBLIC_PEMS = {
    "SubjectPublicKeyInfo": serialization.PublicFormat.SubjectPublicKeyInfo,
    "PKCS#1 RSA PUBLIC KEY": serialization.PublicFormat.PKCS1,
}


@pytest.mark.parametrize("form", RSA_PUBLIC_PEMS)
def test_an_rsa_pem_public_key_becomes_an_rs384_jwk_named_by_its_thumbprint(
    partners_file: Path, tmp_path: Path, form: str
) -> None:
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, RSA_PUBLIC_PEMS[form])
    jwks = key_file(tmp_path, "key.pem", pem)
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    assert entry(partners_file, "harbor-clinic")["jwks"] == {"keys": [expected_rsa_jwk(RSA_KEY)]}


def test_an_ec_p384_pem_public_key_becomes_an_es384_jwk(
    partners_file: Path, tmp_path: Path
) -> None:
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    assert entry(partners_file, "harbor-clinic")["jwks"] == {"keys": [expected_ec_jwk(EC_KEY)]}


@pytest.mark.parametrize("key", [EC_KEY, RSA_KEY], ids=["EC", "RSA"])
def test_a_pem_certificate_gives_its_subjects_public_key(
    partners_file: Path, tmp_path: Path, key: Any
) -> None:
    jwks = key_file(tmp_path, "cert.pem", certificate(key, "harbor-clinic"))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    if isinstance(key, ec.EllipticCurvePrivateKey):
        expected = expected_ec_jwk(key)
    else:
        expected = expected_rsa_jwk(key)
    assert entry(partners_file, "harbor-clinic")["jwks"] == {"keys": [expected]}


def test_a_pem_file_of_two_public_keys_gives_both(partners_file: Path, tmp_path: Path) -> None:
    """Key rotation: the old key and the new one, both accepted until the old one is dropped."""
    jwks = key_file(tmp_path, "keys.pem", spki(EC_KEY) + spki(RSA_KEY))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    keys = entry(partners_file, "harbor-clinic")["jwks"]["keys"]
    assert keys == [expected_ec_jwk(EC_KEY), expected_rsa_jwk(RSA_KEY)]


def test_a_jwks_url_is_recorded_instead_of_keys(partners_file: Path) -> None:
    url = "https://ehr.stmarys.example/.well-known/jwks.json"
    result = invoke(
        "add", "st-marys-hospital", "--kind", "hospital", "--name", "St. Mary's", "--jwks-url", url
    )
    assert result.exit_code == 0, result.output
    added = entry(partners_file, "st-marys-hospital")
    assert added["jwks_url"] == url
    assert "jwks" not in added


def private_key_files() -> dict[str, tuple[bytes, list[str]]]:
    """Private keys in the forms they turn up in, each with secret strings that must never be
    printed."""
    pkcs8 = serialization.PrivateFormat.PKCS8
    traditional = serialization.PrivateFormat.TraditionalOpenSSL
    none = serialization.NoEncryption()
    pem = serialization.Encoding.PEM
    rsa_private = public_jwk(RSA_KEY) | {
        "d": b64url_int(RSA_KEY.private_numbers().d),
        "p": b64url_int(RSA_KEY.private_numbers().p),
    }
    ec_private = public_jwk(EC_KEY) | {
        "d": b64url_fixed(EC_KEY.private_numbers().private_value, 48)
    }
    files: dict[str, tuple[bytes, list[str]]] = {
        "RSA PKCS#8 PEM": (RSA_KEY.private_bytes(pem, pkcs8, none), []),
        "RSA PRIVATE KEY PEM": (RSA_KEY.private_bytes(pem, traditional, none), []),
        "EC PRIVATE KEY PEM": (EC_KEY.private_bytes(pem, traditional, none), []),
        "encrypted PKCS#8 PEM": (
            EC_KEY.private_bytes(pem, pkcs8, serialization.BestAvailableEncryption(b"pw")),
            [],
        ),
        "OpenSSH private key": (
            EC_KEY.private_bytes(pem, serialization.PrivateFormat.OpenSSH, none),
            [],
        ),
        "public and private PEM together": (
            spki(EC_KEY) + EC_KEY.private_bytes(pem, pkcs8, none),
            [],
        ),
        "private RSA JWK": (orjson.dumps(rsa_private), [rsa_private["d"], rsa_private["p"]]),
        "JWKS holding a private EC JWK": (
            orjson.dumps({"keys": [public_jwk(RSA_KEY), ec_private]}),
            [ec_private["d"]],
        ),
    }
    for name, (data, secrets) in files.items():
        if data.startswith(b"-----"):
            # Every base64 line of the PEM body is key material.
            secrets.extend(
                line for line in data.decode().splitlines() if line and not line.startswith("---")
            )
        files[name] = (data, secrets)
    return files


PRIVATE_KEY_FILES = private_key_files()


@pytest.mark.parametrize("form", PRIVATE_KEY_FILES)
def test_a_private_key_is_refused_in_one_line_that_says_so_and_shows_none_of_it(
    partners_file: Path, tmp_path: Path, form: str
) -> None:
    data, secrets = PRIVATE_KEY_FILES[form]
    before = partners_file.read_bytes()
    jwks = key_file(tmp_path, "oops.key", data)
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 1
    line = one_line(result)
    assert "private key" in line
    assert line.startswith("error: --jwks")
    for secret in secrets:
        for fragment in (secret, secret[:16]):
            assert fragment not in result.output
    assert partners_file.read_bytes() == before


UNUSABLE_KEYS = {
    "EC P-256": (spki(ec.generate_private_key(ec.SECP256R1())), "P-384"),
    "RSA 1024 bits": (
        spki(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "2048",
    ),
    "Ed25519": (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "only RSA",
    ),
    "a certificate chain": (
        certificate(EC_KEY, "harbor-clinic") + certificate(STRANGER_KEY, "Some CA"),
        "not a chain",
    ),
    "a damaged PEM": (
        b"-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
        "does not parse",
    ),
    "a PEM that is not a key": (
        b"-----BEGIN X509 CRL-----\nbm90IGEga2V5\n-----END X509 CRL-----\n",
        "not a public key",
    ),
    "neither JSON nor PEM": (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB partner@host\n", "neither"),
    "JSON that is no key": (b'{"issuer": "https://idp.example"}', "JWKS"),
    "a symmetric JWK": (b'{"kty": "oct", "k": "c2VjcmV0"}', "private key"),
}


@pytest.mark.parametrize("case", UNUSABLE_KEYS)
def test_a_key_the_token_endpoint_could_not_use_is_refused_naming_why(
    partners_file: Path, tmp_path: Path, case: str
) -> None:
    data, why = UNUSABLE_KEYS[case]
    before = partners_file.read_bytes()
    jwks = key_file(tmp_path, "key.pem", data)
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 1
    assert why in one_line(result)
    assert "--jwks" in one_line(result)
    assert partners_file.read_bytes() == before


def test_a_key_file_that_cannot_be_read_is_one_line(partners_file: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.pem")
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "H", "--jwks", missing)
    assert result.exit_code == 1
    assert "cannot read the key file" in one_line(result)


# -- the converted key works at the real token endpoint -------------------------------------------


@pytest.fixture
def app_for(
    partners_file: Path, tmp_path: Path, sql_store: SqlStore, clock: FrozenClock
) -> Iterator[Callable[[], TestClient]]:
    """The real app (token endpoint, bearer auth, SQL replay guard) on the file as it is now."""
    clients: list[TestClient] = []

    def start() -> TestClient:
        settings = gateway_settings(
            tmp_path / "gateway",
            policies_dir=ROOT / "consent_policies",
            mappings_dir=ROOT / "mappings",
        )
        app = create_app(
            settings, store=sql_store, clock=clock, partners=load_partners(partners_file)
        )
        client = TestClient(app, base_url=BASE)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def token_request(client: TestClient, partner_id: str, key: Any) -> httpx.Response:
    assertion = mint_client_assertion(partner_id, key, TOKEN_URL, now=START.timestamp())
    form = {
        "grant_type": "client_credentials",
        "scope": "system/Organization.rs",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    response: httpx.Response = client.post("/auth/token", data=form)
    return response


KEY_FORMS: dict[str, tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, bytes]] = {
    "RSA PEM public key": (RSA_KEY, spki(RSA_KEY)),
    "RSA PKCS#1 PEM": (
        RSA_KEY,
        RSA_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        ),
    ),
    "EC P-384 PEM public key": (EC_KEY, spki(EC_KEY)),
    "EC certificate": (EC_KEY, certificate(EC_KEY, "eastside-clinic")),
}


@pytest.mark.parametrize("form", KEY_FORMS)
def test_the_partner_added_from_a_pem_gets_a_token_signed_with_its_private_key(
    partners_file: Path, tmp_path: Path, app_for: Callable[[], TestClient], form: str
) -> None:
    private_key, pem = KEY_FORMS[form]
    jwks = key_file(tmp_path, "key.pem", pem)
    result = invoke(
        "add", "eastside-clinic", "--kind", "clinic", "--name", "Eastside Clinic", "--jwks", jwks
    )
    assert result.exit_code == 0, result.output
    gateway = app_for()

    answer = token_request(gateway, "eastside-clinic", private_key)
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    read = gateway.get(
        "/fhir/Organization/eastside-clinic", headers={"Authorization": f"Bearer {token}"}
    )
    assert read.status_code == 200
    assert read.json()["name"] == "Eastside Clinic"

    # The same assertion signed by any other key is refused: the key written is the one given.
    assert token_request(gateway, "eastside-clinic", STRANGER_KEY).status_code == 401


def test_a_replaced_key_takes_over_from_the_old_one(
    partners_file: Path, tmp_path: Path, app_for: Callable[[], TestClient]
) -> None:
    old = key_file(tmp_path, "old.pem", spki(RSA_KEY))
    new = key_file(tmp_path, "new.pem", spki(EC_KEY))
    args = ("add", "eastside-clinic", "--kind", "clinic", "--name", "Eastside Clinic")
    assert invoke(*args, "--jwks", old).exit_code == 0
    assert invoke(*args, "--jwks", new, "--replace").exit_code == 0
    gateway = app_for()
    assert token_request(gateway, "eastside-clinic", EC_KEY).status_code == 200
    assert token_request(gateway, "eastside-clinic", RSA_KEY).status_code == 401


# -- refusals leave the file as it was -----------------------------------------------------------


def test_an_unknown_kind_is_refused_in_one_line_without_echoing_it(
    partners_file: Path, tmp_path: Path
) -> None:
    before = partners_file.read_bytes()
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke("add", "spies", "--kind", "intelligence-agency", "--name", "X", "--jwks", jwks)
    assert result.exit_code == 1
    line = one_line(result)
    assert "--kind must be one of" in line
    assert "intelligence-agency" not in line
    assert partners_file.read_bytes() == before


def test_an_id_already_in_the_file_is_refused_in_one_line(
    partners_file: Path, tmp_path: Path
) -> None:
    before = partners_file.read_bytes()
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke(
        "add", "riverside-shelter", "--kind", "shelter", "--name", "Impostor", "--jwks", jwks
    )
    assert result.exit_code == 1
    assert "--replace" in one_line(result)
    assert partners_file.read_bytes() == before
    assert load_partners(partners_file).by_client_id("riverside-shelter") is not None


def test_replace_puts_the_new_entry_in_place_and_keeps_the_rest_of_the_text(
    partners_file: Path, tmp_path: Path
) -> None:
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    added = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert added.exit_code == 0, added.output
    result = invoke(
        "add", "riverside-shelter", "--kind", "shelter", "--name", "Riverside Safe Haven",
        "--jwks", jwks, "--purposes", "COC", "--replace",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "replaced" in result.output
    assert [e["id"] for e in entries(partners_file)] == ["riverside-shelter", "harbor-clinic"]
    replaced = entry(partners_file, "riverside-shelter")
    assert replaced["jwks"] == {"keys": [expected_ec_jwk(EC_KEY)]}
    assert replaced["purposes"] == ["COC"]
    assert "hl7_sending_facility" not in replaced  # all of the entry is replaced
    text = partners_file.read_text()
    assert text.startswith("# Our care network. Keep this comment.\npartners:\n")
    assert "# The shelter reads" not in text  # a comment inside the replaced entry goes with it
    assert text.endswith("\n# Trailing note, also kept.\n")


def test_replace_of_an_id_not_yet_in_the_file_adds_it(partners_file: Path, tmp_path: Path) -> None:
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    args = ("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert invoke(*args, "--replace").exit_code == 0
    assert [e["id"] for e in entries(partners_file)] == ["riverside-shelter", "harbor-clinic"]


BAD_ENTRIES: dict[str, tuple[tuple[str, ...], str]] = {
    "an id the loader refuses": (("Harbor_Clinic", "--kind", "clinic"), "ID: must match"),
    "a scope that is not SMART": (
        ("harbor-clinic", "--kind", "clinic", "--scopes", "system/Patient.rs,patient/*.read"),
        "--scopes: scopes[1] is not a SMART system scope",
    ),
    "a purpose that is not v3 PurposeOfUse": (
        ("harbor-clinic", "--kind", "clinic", "--purposes", "TREAT,SNOOP"),
        "--purposes: purposes[1] is not a v3 PurposeOfUse code",
    ),
    "a default purpose outside the purposes": (
        ("harbor-clinic", "--kind", "clinic", "--default-purpose", "HLEGAL"),
        "--default-purpose: must be one of this partner's purposes",
    ),
    "a victim service provider that is no shelter": (
        ("harbor-clinic", "--kind", "clinic", "--victim-service-provider"),
        "--victim-service-provider: only a partner of kind shelter",
    ),
    "an endpoint with credentials": (
        ("harbor-clinic", "--kind", "clinic", "--endpoint", "https://u:pw@ehr.example/fhir"),
        "--endpoint: endpoint must not carry credentials",
    ),
    "an organization another partner has": (
        ("harbor-clinic", "--kind", "clinic", "--organization", "Organization/riverside-shelter"),
        "partners[1].organization: repeats the value of partners[0]",
    ),
    "an HL7 facility another partner has": (
        ("harbor-clinic", "--kind", "clinic", "--hl7-sending-facility", "RIVERSIDE"),
        "partners[1].hl7_sending_facility: repeats the value of partners[0]",
    ),
    "a peer that is no address": (
        ("harbor-clinic", "--kind", "clinic", "--hl7-peers", "clinic.example"),
        "--hl7-peers: hl7_peers[0] is not an IP address or network",
    ),
}


@pytest.mark.parametrize("case", BAD_ENTRIES)
def test_a_bad_entry_is_refused_and_leaves_the_file_untouched_byte_for_byte(
    partners_file: Path, tmp_path: Path, case: str
) -> None:
    args, why = BAD_ENTRIES[case]
    before = partners_file.read_bytes()
    mtime = partners_file.stat().st_mtime_ns
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke("add", *args, "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 1
    line = one_line(result)
    assert why in line
    assert partners_file.read_bytes() == before
    assert partners_file.stat().st_mtime_ns == mtime
    assert no_temporary_files(partners_file)
    for value in ("Harbor_Clinic", "SNOOP", "HLEGAL", "u:pw", "clinic.example", "RIVERSIDE"):
        assert value not in line
    assert "Organization/riverside-shelter" not in line


def test_a_plain_http_jwks_url_is_refused(partners_file: Path) -> None:
    before = partners_file.read_bytes()
    url = "http://ehr.example/jwks.json"
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "H", "--jwks-url", url)
    assert result.exit_code == 1
    assert "--jwks-url: jwks_url must be https" in one_line(result)
    assert partners_file.read_bytes() == before


@pytest.mark.parametrize("keys", ["both", "neither"])
def test_add_needs_exactly_one_of_jwks_and_jwks_url(
    partners_file: Path, tmp_path: Path, keys: str
) -> None:
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    given = ["--jwks", jwks, "--jwks-url", "https://e.example/jwks"] if keys == "both" else []
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "H", *given)
    assert result.exit_code == 1
    assert "exactly one of --jwks" in one_line(result)


def test_a_partners_file_that_does_not_load_is_not_edited(
    partners_file: Path, tmp_path: Path
) -> None:
    partners_file.write_text(network_text().replace("kind: shelter", "kind: spy-agency"))
    before = partners_file.read_bytes()
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "H", "--jwks", jwks)
    assert result.exit_code == 1
    line = one_line(result)
    assert "does not load" in line
    assert "partners[0].kind" in line
    assert "spy-agency" not in line
    assert partners_file.read_bytes() == before


# -- what is written -----------------------------------------------------------------------------


def test_adding_keeps_every_byte_of_the_file_before_the_new_entry(
    partners_file: Path, tmp_path: Path
) -> None:
    before = partners_file.read_text()
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    assert "comments were not kept" not in result.output
    after = partners_file.read_text()
    head, _, tail = before.partition("\n\n# Trailing note")
    assert after.startswith(head + "\n\n  - id: harbor-clinic\n")  # an item of the same list
    assert after.endswith("\n\n# Trailing note" + tail)
    assert [p.id for p in load_partners(partners_file)] == ["riverside-shelter", "harbor-clinic"]


def test_the_demo_network_keeps_its_comments_when_a_partner_is_added(
    partners_file: Path, tmp_path: Path
) -> None:
    partners_file.write_bytes(EXAMPLE.read_bytes())
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke("add", "eastside-clinic", "--kind", "clinic", "--name", "East", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    assert "demo key placeholder" in result.output  # serve would want GATEWAY_DEMO=true
    assert partners_file.read_text().startswith(EXAMPLE.read_text().rstrip("\n") + "\n\n  - id:")
    assert len(entries(partners_file)) == len(yaml.safe_load(EXAMPLE.read_text())["partners"]) + 1


def test_a_file_in_json_style_is_rewritten_whole_and_the_command_says_so(
    partners_file: Path, tmp_path: Path
) -> None:
    shelter = yaml.safe_load(network_text())["partners"][0]
    partners_file.write_bytes(orjson.dumps({"partners": [shelter]}))
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    assert "comments were not kept" in result.output
    assert entries(partners_file)[0] == shelter
    assert [p.id for p in load_partners(partners_file)] == ["riverside-shelter", "harbor-clinic"]


def test_a_change_made_by_someone_else_meanwhile_is_not_overwritten(
    partners_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.partners

    real_check = gateway.partners.check_partners_file
    theirs = network_text() + "# Another operator's edit.\n"

    def check_while_someone_edits(path: Path, *, allow_demo_placeholder: bool) -> Any:
        if path.name.endswith(".tmp"):  # the new file is being checked: now they save theirs
            partners_file.write_text(theirs)
        return real_check(path, allow_demo_placeholder=allow_demo_placeholder)

    monkeypatch.setattr(gateway.partners, "check_partners_file", check_while_someone_edits)
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 1
    assert "changed while this ran" in one_line(result)
    assert partners_file.read_text() == theirs
    assert no_temporary_files(partners_file)


def test_the_file_keeps_its_permissions(partners_file: Path, tmp_path: Path) -> None:
    partners_file.chmod(0o640)
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(partners_file.stat().st_mode) == 0o640
    assert no_temporary_files(partners_file)


def test_a_symlinked_partners_file_stays_a_symlink(partners_file: Path, tmp_path: Path) -> None:
    link = tmp_path / "current.yaml"
    link.symlink_to(partners_file)
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = runner.invoke(
        partners_app,
        ["add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks],
        env={"GATEWAY_PARTNERS_FILE": str(link)},
    )
    assert result.exit_code == 0, result.output
    assert link.is_symlink()
    assert [e["id"] for e in entries(partners_file)] == ["riverside-shelter", "harbor-clinic"]


def test_the_first_partner_creates_the_file(partners_file: Path, tmp_path: Path) -> None:
    partners_file.unlink()
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    assert partners_file.read_text().startswith("# The partner network")
    assert [p.id for p in load_partners(partners_file)] == ["harbor-clinic"]


# -- check ---------------------------------------------------------------------------------------


def test_check_of_a_good_file_says_how_many_partners(partners_file: Path, tmp_path: Path) -> None:
    jwks = key_file(tmp_path, "key.pem", spki(EC_KEY))
    assert (
        invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "H", "--jwks", jwks).exit_code
        == 0
    )
    result = invoke("check")
    assert result.exit_code == 0, result.output
    assert result.stdout == "2 partners, OK\n"


def test_check_names_each_problem_by_line_and_field_and_shows_no_value(
    partners_file: Path,
) -> None:
    private = public_jwk(RSA_KEY) | {"d": b64url_int(RSA_KEY.private_numbers().d)}
    text = (
        network_text()
        .replace("kind: shelter", "kind: spy-agency")
        .replace("default_purpose: COC", "default_purpose: COC\n    favourite_colour: teal")
        + "  - id: harbor-clinic\n"
        "    name: Harbor\n"
        "    kind: clinic\n"
        "    organization: Organization/harbor-clinic\n"
        f"    jwks: {{keys: [{json.dumps(private)}]}}\n"
        "    scopes: [system/*.rs]\n"
        "    purposes: [TREAT]\n"
        "    default_purpose: TREAT\n"
    )
    partners_file.write_text(text)
    result = invoke("check")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [
        f"{partners_file}:5: partners[0].kind: must be one of 'shelter', 'legal-aid', 'clinic', "
        "'hospital', 'compliance' or 'admin'",
        f"{partners_file}:12: partners[0].favourite_colour: is not a known field",
        f"{partners_file}:20: partners[1].jwks: keys: key 0: private key material is not allowed "
        "here; give the public key only",
    ]
    for value in ("spy-agency", "teal", private["d"][:16], private["n"][:16]):
        assert value not in result.output


def test_check_refuses_the_demo_placeholder_unless_in_demo_mode(
    partners_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partners_file.write_bytes(EXAMPLE.read_bytes())
    refused = invoke("check")
    assert refused.exit_code == 1
    assert len(refused.output.strip().splitlines()) == 6
    assert all("demo placeholder" in line for line in refused.output.strip().splitlines())
    monkeypatch.setenv("GATEWAY_DEMO", "true")
    accepted = invoke("check")
    assert accepted.exit_code == 0, accepted.output
    assert accepted.stdout == "6 partners, OK\n"


def test_check_of_a_missing_file_is_one_line(partners_file: Path) -> None:
    partners_file.unlink()
    result = invoke("check")
    assert result.exit_code == 1
    assert "cannot read the partners file" in one_line(result)


JWKS_URLS = {
    "good": "https://good.example/jwks.json",
    "missing": "https://missing.example/jwks.json",
    "html": "https://html.example/jwks.json",
    "private": "https://private.example/jwks.json",
    "down": "https://down.example/jwks.json",
    "slow": "https://slow.example/jwks.json",
}


@pytest.fixture
def url_partners(partners_file: Path) -> Path:
    for name, url in JWKS_URLS.items():
        result = invoke(
            "add", f"{name}-clinic", "--kind", "clinic", "--name", name, "--jwks-url", url
        )
        assert result.exit_code == 0, result.output
    return partners_file


def test_check_fetches_nothing_without_online(url_partners: Path) -> None:
    with respx.mock(assert_all_called=False) as mock:
        route = mock.route()
        result = invoke("check")
    assert result.exit_code == 0, result.output
    assert result.stdout == "7 partners, OK\n"
    assert not route.called


def test_check_online_warns_of_each_jwks_url_that_does_not_answer_a_valid_jwks(
    url_partners: Path,
) -> None:
    private = public_jwk(EC_KEY) | {"d": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}
    with respx.mock(assert_all_called=True) as mock:
        mock.get(JWKS_URLS["good"]).respond(200, json={"keys": [public_jwk(EC_KEY)]})
        mock.get(JWKS_URLS["missing"]).respond(404)
        mock.get(JWKS_URLS["html"]).respond(200, text="<html>sign in</html>")
        mock.get(JWKS_URLS["private"]).respond(200, json={"keys": [private]})
        mock.get(JWKS_URLS["down"]).mock(side_effect=httpx.ConnectError("refused"))
        mock.get(JWKS_URLS["slow"]).mock(side_effect=httpx.ReadTimeout("slow"))
        result = invoke("check", "--online")
    assert result.exit_code == 0, result.output  # a warning, not a failure
    assert result.stdout == "7 partners, OK\n"
    warnings = result.stderr.strip().splitlines()
    assert warnings == [
        "warning: partners[2] missing-clinic: jwks_url answered HTTP 404, not a JWKS",
        "warning: partners[3] html-clinic: jwks_url did not answer JSON",
        "warning: partners[4] private-clinic: jwks_url did not answer a valid JWKS (key 0: "
        "private key material is not allowed here; give the public key only)",
        "warning: partners[5] down-clinic: jwks_url did not answer (ConnectError)",
        "warning: partners[6] slow-clinic: jwks_url did not answer within 5 s",
    ]
    assert "c2VjcmV0" not in result.output


# -- list ----------------------------------------------------------------------------------------


@pytest.fixture
def mixed_network(partners_file: Path, tmp_path: Path) -> Path:
    """One partner of each key source: inline keys, a jwks_url, the demo placeholder."""
    text = partners_file.read_text() + (
        "  - id: st-marys-hospital\n"
        "    name: St. Mary's Hospital\n"
        "    kind: hospital\n"
        "    organization: Organization/st-marys-hospital\n"
        "    jwks_url: https://ehr.stmarys.example/jwks.json\n"
        "    scopes: [system/*.rs]\n"
        "    purposes: [TREAT]\n"
        "    default_purpose: TREAT\n"
        "    endpoint: https://ehr.stmarys.example/fhir\n"
        "    hl7_sending_facility: STMARYS\n"
        "  - id: compliance-office\n"
        "    name: Network Compliance Office\n"
        "    kind: compliance\n"
        "    organization: Organization/compliance-office\n"
        "    jwks: demo-generated-keys\n"
        "    scopes: [system/AuditEvent.rs]\n"
        "    purposes: [HCOMPL]\n"
        "    default_purpose: HCOMPL\n"
    )
    partners_file.write_text(text)
    jwks = key_file(tmp_path, "keys.pem", spki(EC_KEY) + spki(RSA_KEY))
    result = invoke("add", "harbor-clinic", "--kind", "clinic", "--name", "Harbor", "--jwks", jwks)
    assert result.exit_code == 0, result.output
    return partners_file


def key_material() -> list[str]:
    material: list[str] = []
    for key in (SHELTER_KEY, EC_KEY, RSA_KEY):
        jwk = public_jwk(key)
        material.extend(str(jwk[m])[:16] for m in ("x", "y", "n") if m in jwk)
    return material


def test_list_shows_a_row_per_partner_and_where_its_keys_come_from(mixed_network: Path) -> None:
    result = invoke("list")
    assert result.exit_code == 0, result.output
    rows = {
        cells[0]: cells
        for line in result.stdout.splitlines()
        if line.startswith("│") and len(cells := [c.strip() for c in line[1:-1].split("│")]) == 7
    }
    assert rows["riverside-shelter"] == [
        "riverside-shelter", "Riverside Safe Haven", "shelter", "Organization/riverside-shelter",
        "jwks with 1 key", "no", "RIVERSIDE",
    ]  # fmt: skip
    assert rows["st-marys-hospital"][4:] == [
        "url https://ehr.stmarys.example/jwks.json", "yes", "STMARYS",
    ]  # fmt: skip
    assert rows["compliance-office"][4:] == ["demo keys", "no", ""]
    assert rows["harbor-clinic"][4:] == ["jwks with 2 keys", "no", ""]
    for material in key_material():
        assert material not in result.output


def test_list_json_is_for_machines_and_holds_no_key_material(mixed_network: Path) -> None:
    result = invoke("list", "--json")
    assert result.exit_code == 0, result.output
    partners = orjson.loads(result.stdout)["partners"]
    assert [p["id"] for p in partners] == [
        "riverside-shelter", "st-marys-hospital", "compliance-office", "harbor-clinic",
    ]  # fmt: skip
    by_id = {p["id"]: p for p in partners}
    assert by_id["riverside-shelter"] == {
        "id": "riverside-shelter",
        "name": "Riverside Safe Haven",
        "kind": "shelter",
        "organization": "Organization/riverside-shelter",
        "key_source": "jwks",
        "keys": 1,
        "kids": [public_jwk(SHELTER_KEY)["kid"]],
        "jwks_url": None,
        "endpoint": None,
        "hl7_sending_facility": "RIVERSIDE",
        "hl7_peers": None,
        "victim_service_provider": False,
        "scopes": ["system/*.cruds"],
        "purposes": ["COC", "CAREMGT", "TREAT"],
        "default_purpose": "COC",
    }
    assert by_id["st-marys-hospital"]["key_source"] == "jwks_url"
    assert by_id["st-marys-hospital"]["keys"] is None
    assert by_id["compliance-office"]["key_source"] == "demo"
    assert by_id["harbor-clinic"]["keys"] == 2
    for material in key_material():
        assert material not in result.output


def test_list_of_a_file_that_does_not_load_is_one_line(partners_file: Path) -> None:
    partners_file.write_text(network_text().replace("kind: shelter", "kind: spy-agency"))
    result = invoke("list")
    assert result.exit_code == 1
    assert "partners[0].kind" in one_line(result)


# -- help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["add", "check", "list"])
def test_each_command_explains_itself(command: str) -> None:
    result = runner.invoke(partners_app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_add_help_says_what_happens_to_comments() -> None:
    result = runner.invoke(partners_app, ["add", "--help"], env={"COLUMNS": "200"})
    assert "comments" in result.output
    assert "private key" in result.output.lower()
