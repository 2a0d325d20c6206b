"""SMART Backend Services over real HTTP: discovery, the token endpoint (every refusal the
contract names), replay protection that survives a restart, partner keys fetched from jwks_url,
and bearer authentication on /fhir. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
import respx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from gateway.access.scopes import ScopeGrant
from gateway.app import create_app
from gateway.clock import FrozenClock
from gateway.disclose.auth import (
    JwksFetcher,
    JwksUnavailable,
    SqlReplayGuard,
    TokenService,
    load_token_signing_key,
)
from gateway.partners import PartnerDirectory, load_partners, mint_client_assertion, public_jwk
from gateway.settings import Settings
from gateway.store.database import make_engine
from gateway.store.schema import token_replay
from gateway.store.sql import SqlStore
from tests.conftest import START
from tests.support.network import BASE

TOKEN_URL = f"{BASE}/auth/token"
NOW = START.timestamp()
JWKS_URL = "https://ehr.stmarys.example/.well-known/jwks.json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

KEYS: dict[str, Any] = {
    "riverside-shelter": ec.generate_private_key(ec.SECP384R1()),
    "northside-legal-aid": ec.generate_private_key(ec.SECP384R1()),
    "harbor-clinic": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "st-marys-hospital": ec.generate_private_key(ec.SECP384R1()),
}
STRANGER_KEY = ec.generate_private_key(ec.SECP384R1())


def kid(partner_id: str) -> str:
    return str(public_jwk(KEYS[partner_id])["kid"])


def partner_entries() -> list[dict[str, Any]]:
    return [
        {
            "id": "riverside-shelter",
            "name": "Riverside Safe Haven",
            "kind": "shelter",
            "organization": "Organization/riverside-shelter",
            "jwks": {"keys": [public_jwk(KEYS["riverside-shelter"])]},
            "scopes": ["system/*.cruds"],
            "purposes": ["COC", "TREAT", "CAREMGT"],
            "default_purpose": "COC",
        },
        {
            "id": "northside-legal-aid",
            "name": "Northside Legal Aid",
            "kind": "legal-aid",
            "organization": "Organization/northside-legal-aid",
            "jwks": {"keys": [public_jwk(KEYS["northside-legal-aid"])]},
            "scopes": ["system/CarePlan.rs", "system/Task.r", "system/Patient.rs"],
            "purposes": ["HLEGAL", "COC"],
            "default_purpose": "HLEGAL",
        },
        {
            "id": "harbor-clinic",
            "name": "Harbor Community Clinic",
            "kind": "clinic",
            "organization": "Organization/harbor-clinic",
            "jwks": {"keys": [public_jwk(KEYS["harbor-clinic"])]},
            "scopes": ["system/*.rs"],
            "purposes": ["TREAT", "COC"],
            "default_purpose": "TREAT",
        },
        {
            "id": "st-marys-hospital",
            "name": "St. Mary's Hospital",
            "kind": "hospital",
            "organization": "Organization/st-marys-hospital",
            "jwks_url": JWKS_URL,
            "scopes": ["system/ServiceRequest.cruds", "system/Task.cruds", "system/Patient.rs"],
            "purposes": ["TREAT", "ETREAT", "BTG"],
            "default_purpose": "TREAT",
            "hl7_sending_facility": "STMARYS",
        },
    ]


@pytest.fixture
def network(tmp_path: Path) -> PartnerDirectory:
    path = tmp_path / "partners.yaml"
    path.write_text(yaml.safe_dump({"partners": partner_entries()}, sort_keys=False))
    return load_partners(path)


@pytest.fixture
def gateway(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, network: PartnerDirectory
) -> Iterator[TestClient]:
    app = create_app(settings, store=sql_store, clock=clock, partners=network)
    with TestClient(app, base_url=BASE) as client:
        yield client


@pytest.fixture
def hospital_keys() -> Iterator[respx.MockRouter]:
    jwks = {"keys": [public_jwk(KEYS["st-marys-hospital"])]}
    with respx.mock(assert_all_called=False) as mock:
        mock.get(JWKS_URL, name="jwks").respond(200, json=jwks)
        yield mock


def claims(partner_id: str = "riverside-shelter", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "iss": partner_id,
        "sub": partner_id,
        "aud": TOKEN_URL,
        "iat": int(NOW),
        "exp": int(NOW) + 240,
        "jti": hashlib.sha256(f"{partner_id}{changes}{id(changes)}".encode()).hexdigest(),
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def sign(body: dict[str, Any], key: Any, alg: str = "ES384", **headers: Any) -> str:
    return jwt.encode(body, key, algorithm=alg, headers=headers or None)


def assertion(partner_id: str = "riverside-shelter", **kw: Any) -> str:
    return mint_client_assertion(partner_id, KEYS[partner_id], TOKEN_URL, now=NOW, **kw)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], body: dict[str, Any], signature: bytes = b"") -> str:
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(body))}"
    return f"{signing_input}.{b64(signature)}"


def ask(client: TestClient, client_assertion: str, scope: str = "system/*.rs", **form: str) -> Any:
    data = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion,
        **form,
    }
    return client.post("/auth/token", data=data)


def token_for(client: TestClient, partner_id: str = "riverside-shelter", **kw: Any) -> str:
    response = ask(client, assertion(partner_id, **kw))
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert isinstance(token, str)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def oauth_error(response: Any, status: int, error: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    description = body["error_description"]
    assert isinstance(description, str)
    return description


def tokens_of(client: TestClient) -> TokenService:
    service = client.app.state.gateway.extras["tokens"]  # type: ignore[attr-defined]
    assert isinstance(service, TokenService)
    return service


# -- discovery -----------------------------------------------------------------------------------


def test_smart_configuration_needs_no_token_and_names_the_token_endpoint(
    gateway: TestClient,
) -> None:
    response = gateway.get("/.well-known/smart-configuration")
    assert response.status_code == 200
    doc = response.json()
    assert doc["token_endpoint"] == TOKEN_URL
    assert doc["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert doc["grant_types_supported"] == ["client_credentials"]
    assert doc["capabilities"] == ["client-confidential-asymmetric"]
    assert "system/*.rs" in doc["scopes_supported"]
    assert "system/CarePlan.cruds" in doc["scopes_supported"]


# -- the happy path ------------------------------------------------------------------------------


def test_a_partner_gets_a_token_and_reads_with_it(gateway: TestClient) -> None:
    response = ask(gateway, assertion(), scope="system/Organization.rs system/CarePlan.read")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    answer = response.json()
    assert answer["token_type"] == "bearer"
    assert 0 < answer["expires_in"] <= 300
    assert answer["scope"] == "system/CarePlan.rs system/Organization.rs"

    read = gateway.get(
        "/fhir/Organization/riverside-shelter", headers=bearer(answer["access_token"])
    )
    assert read.status_code == 200
    assert read.json()["name"] == "Riverside Safe Haven"


def test_the_access_token_carries_who_what_and_why(gateway: TestClient, settings: Settings) -> None:
    token = token_for(gateway, purposes=["TREAT"])
    public = load_token_signing_key(settings.keys_dir).public_key()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES384"
    body = jwt.decode(
        token, public, algorithms=["ES384"], audience=f"{BASE}/fhir", options={"verify_exp": False}
    )
    assert body["iss"] == BASE
    assert body["sub"] == "riverside-shelter"
    assert body["exp"] - body["iat"] <= 300
    assert body["scope"] == "system/*.rs"
    assert body["purpose_of_use"] == ["TREAT"]
    assert body["kind"] == "shelter"
    assert body["organization"] == "Organization/riverside-shelter"
    assert len(body["jti"]) >= 16


def test_bearer_authentication_yields_the_requester(gateway: TestClient) -> None:
    token = token_for(gateway, "northside-legal-aid", purposes=["COC"])
    requester = tokens_of(gateway).requester_for(token)
    assert requester.partner_id == "northside-legal-aid"
    assert requester.kind == "legal-aid"
    assert requester.organization == "Organization/northside-legal-aid"
    assert requester.scopes == ("system/CarePlan.rs", "system/Patient.rs", "system/Task.r")
    assert requester.purpose_of_use == ("COC",)
    assert ScopeGrant.parse(requester.scopes).allows("CarePlan", "search")
    assert not ScopeGrant.parse(requester.scopes).allows("Task", "search")


def test_an_rs384_partner_is_accepted(gateway: TestClient) -> None:
    token = token_for(gateway, "harbor-clinic")
    assert tokens_of(gateway).requester_for(token).purpose_of_use == ("TREAT",)


def test_the_default_purpose_applies_when_the_assertion_names_none(gateway: TestClient) -> None:
    token = token_for(gateway, "northside-legal-aid")
    assert tokens_of(gateway).requester_for(token).purpose_of_use == ("HLEGAL",)


@pytest.mark.parametrize(
    "purpose",
    [
        "TREAT",
        "urn:oid:2.16.840.1.113883.5.8#TREAT",
        "http://terminology.hl7.org/CodeSystem/v3-PurposeOfUse#TREAT",
    ],
)
def test_purpose_of_use_is_read_from_the_hl7_b2b_extension_in_any_udap_form(
    gateway: TestClient, purpose: str
) -> None:
    token = token_for(gateway, purposes=[purpose, "COC"])
    assert tokens_of(gateway).requester_for(token).purpose_of_use == ("TREAT", "COC")


# -- refusals: client authentication -------------------------------------------------------------


def _hs256_with_public_pem() -> str:
    pem = (
        KEYS["riverside-shelter"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": kid("riverside-shelter")}
    unsigned = hand_made(header, claims(), b"").rsplit(".", 1)[0]
    signature = hmac.new(pem, unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{b64(signature)}"


BAD_ASSERTIONS: dict[str, Callable[[], str]] = {
    "wrong signature": lambda: sign(claims(), STRANGER_KEY, kid=kid("riverside-shelter")),
    "key of another partner": lambda: sign(claims(), KEYS["northside-legal-aid"]),
    "key of another partner under this kid": lambda: sign(
        claims(), KEYS["northside-legal-aid"], kid=kid("riverside-shelter")
    ),
    "wrong aud": lambda: assertion(claims={"aud": f"{BASE}/fhir"}),
    "aud with a trailing slash": lambda: assertion(claims={"aud": f"{TOKEN_URL}/"}),
    "expired": lambda: assertion(claims={"iat": int(NOW) - 400, "exp": int(NOW) - 61}),
    "exp too far ahead": lambda: assertion(lifetime=3600),
    "exp missing": lambda: sign(claims(exp=None), KEYS["riverside-shelter"]),
    "exp not a number": lambda: assertion(claims={"exp": "tomorrow"}),
    "iat in the future": lambda: assertion(claims={"iat": int(NOW) + 120}),
    "nbf in the future": lambda: assertion(claims={"nbf": int(NOW) + 120}),
    "unknown client": lambda: sign(claims("eastside-clinic"), STRANGER_KEY),
    "iss is not sub": lambda: assertion(claims={"sub": "northside-legal-aid"}),
    "alg none": lambda: hand_made({"alg": "none", "typ": "JWT"}, claims()),
    "HS256 with the public key PEM as secret": _hs256_with_public_pem,
    "RS256": lambda: sign(claims("harbor-clinic"), KEYS["harbor-clinic"], "RS256"),
    "ES512 header": lambda: hand_made({"alg": "ES512"}, claims(), b"x" * 132),
    "jti missing": lambda: sign(claims(jti=None), KEYS["riverside-shelter"]),
    "jti too long": lambda: assertion(jti="j" * 256),
    "not a JWT": lambda: "not.a.jwt",
    "crit header": lambda: sign(claims(), KEYS["riverside-shelter"], crit=["exp"]),
}


@pytest.mark.parametrize("case", list(BAD_ASSERTIONS))
def test_every_bad_assertion_answers_the_same_invalid_client(
    gateway: TestClient, case: str
) -> None:
    description = oauth_error(ask(gateway, BAD_ASSERTIONS[case]()), 401, "invalid_client")
    assert description == "client authentication failed"


def test_a_replayed_jti_is_refused(gateway: TestClient) -> None:
    once = assertion()
    assert ask(gateway, once).status_code == 200
    oauth_error(ask(gateway, once), 401, "invalid_client")
    # The same jti from another partner is that partner's own.
    assert ask(gateway, assertion("northside-legal-aid", jti="shared-jti-0001")).status_code == 200
    assert ask(gateway, assertion(jti="shared-jti-0001")).status_code == 200


def test_a_jti_stays_used_after_a_restart_on_the_same_database(
    settings: Settings,
    sql_store: SqlStore,
    clock: FrozenClock,
    network: PartnerDirectory,
    key_ring: Any,
) -> None:
    once = assertion()
    with TestClient(
        create_app(settings, store=sql_store, clock=clock, partners=network), base_url=BASE
    ) as first:
        assert ask(first, once).status_code == 200
    url = sql_store.engine.url.render_as_string(hide_password=False)
    restarted = SqlStore(make_engine(url), key_ring, clock)
    with TestClient(
        create_app(settings, store=restarted, clock=clock, partners=network), base_url=BASE
    ) as second:
        oauth_error(ask(second, once), 401, "invalid_client")
        assert ask(second, assertion()).status_code == 200


def test_a_client_id_form_field_must_name_the_asserting_client(gateway: TestClient) -> None:
    response = ask(gateway, assertion(), client_id="northside-legal-aid")
    oauth_error(response, 401, "invalid_client")
    assert ask(gateway, assertion(), client_id="riverside-shelter").status_code == 200


def test_refusals_are_logged_by_reason_without_the_assertion(
    gateway: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("gateway.auth")
    logger.addHandler(caplog.handler)
    try:
        bad = assertion(claims={"aud": "https://elsewhere.example/token"})
        with caplog.at_level(logging.INFO, logger="gateway.auth"):
            oauth_error(ask(gateway, bad), 401, "invalid_client")
    finally:
        logger.removeHandler(caplog.handler)
    assert "invalid_client (audience)" in caplog.text
    assert bad not in caplog.text
    assert "elsewhere" not in caplog.text


# -- refusals: grant, purpose, scope, form -------------------------------------------------------


def test_a_purpose_the_partner_may_not_use_is_refused(gateway: TestClient) -> None:
    oauth_error(ask(gateway, assertion(purposes=["HLEGAL"])), 400, "invalid_grant")
    oauth_error(ask(gateway, assertion(purposes=["COC", "BTG"])), 400, "invalid_grant")
    oauth_error(ask(gateway, assertion(purposes=["urn:oid:1.2.3#TREAT"])), 400, "invalid_grant")
    oauth_error(ask(gateway, assertion(purposes=[])), 400, "invalid_grant")


def test_the_grant_is_what_was_asked_within_what_the_partner_may_have(gateway: TestClient) -> None:
    legal = ask(gateway, assertion("northside-legal-aid"), scope="system/*.cruds")
    assert legal.json()["scope"] == "system/CarePlan.rs system/Patient.rs system/Task.r"
    narrowed = ask(
        gateway,
        assertion("northside-legal-aid"),
        scope="system/CarePlan.cruds system/Consent.rs launch openid",
    )
    assert narrowed.json()["scope"] == "system/CarePlan.rs"


def test_a_request_for_nothing_the_partner_may_have_is_invalid_scope(gateway: TestClient) -> None:
    oauth_error(
        ask(gateway, assertion("northside-legal-aid"), scope="system/Consent.cud"),
        400,
        "invalid_scope",
    )
    oauth_error(ask(gateway, assertion(), scope="patient/*.read"), 400, "invalid_scope")
    oauth_error(ask(gateway, assertion(), scope=""), 400, "invalid_scope")


def test_malformed_token_requests_are_invalid_request(gateway: TestClient) -> None:
    as_json = gateway.post("/auth/token", json={"grant_type": "client_credentials"})
    oauth_error(as_json, 400, "invalid_request")
    repeated = gateway.post(
        "/auth/token",
        content=b"grant_type=client_credentials&grant_type=client_credentials",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    oauth_error(repeated, 400, "invalid_request")
    broken = gateway.post(
        "/auth/token",
        content=b"grant_type=client_credentials&&%ff%fe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    oauth_error(broken, 400, "invalid_request")
    no_grant = gateway.post("/auth/token", data={"client_assertion": assertion()})
    oauth_error(no_grant, 400, "invalid_request")
    no_assertion = gateway.post("/auth/token", data={"grant_type": "client_credentials"})
    oauth_error(no_assertion, 400, "invalid_request")
    too_long = ask(gateway, "a" * 9000)
    oauth_error(too_long, 400, "invalid_request")


def test_other_grant_types_are_unsupported(gateway: TestClient) -> None:
    response = ask(gateway, assertion(), grant_type="password")
    oauth_error(response, 400, "unsupported_grant_type")


def test_another_assertion_type_is_invalid_client(gateway: TestClient) -> None:
    response = ask(gateway, assertion(), client_assertion_type="urn:example:saml2-bearer")
    oauth_error(response, 401, "invalid_client")


def test_an_oversized_body_is_refused_before_it_is_read(gateway: TestClient) -> None:
    response = ask(gateway, assertion(), scope="system/*.rs " * 2000)
    oauth_error(response, 413, "invalid_request")


# -- partner keys from jwks_url ------------------------------------------------------------------


def test_keys_from_jwks_url_are_fetched_once_and_cached(
    gateway: TestClient, hospital_keys: respx.MockRouter
) -> None:
    for _ in range(3):
        assert ask(gateway, assertion("st-marys-hospital")).status_code == 200
    assert hospital_keys["jwks"].call_count == 1


def test_an_unreachable_jwks_url_is_a_refusal_and_is_not_hammered(gateway: TestClient) -> None:
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(JWKS_URL).mock(side_effect=httpx.ConnectTimeout("timed out"))
        oauth_error(ask(gateway, assertion("st-marys-hospital")), 401, "invalid_client")
        assert route.call_count == 2  # one retry, with backoff
        oauth_error(ask(gateway, assertion("st-marys-hospital")), 401, "invalid_client")
        assert route.call_count == 2  # not again within 30 s
    assert ask(gateway, assertion()).status_code == 200  # other partners are unaffected


def test_an_unknown_kid_refetches_the_key_set_at_most_every_30_seconds(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, network: PartnerDirectory
) -> None:
    moment = [1000.0]
    fetcher = JwksFetcher(monotonic=lambda: moment[0], retry_wait_max=0.01)
    tokens = TokenService.from_settings(
        settings, network, clock, SqlReplayGuard(sql_store.engine), fetcher
    )
    old = {"keys": [public_jwk(STRANGER_KEY)]}
    new = {"keys": [public_jwk(STRANGER_KEY), public_jwk(KEYS["st-marys-hospital"])]}
    app = create_app(settings, store=sql_store, clock=clock, tokens=tokens)
    with respx.mock() as mock, TestClient(app, base_url=BASE) as client:
        route = mock.get(JWKS_URL).mock(
            side_effect=[httpx.Response(200, json=old), httpx.Response(200, json=new)]
        )
        oauth_error(ask(client, assertion("st-marys-hospital")), 401, "invalid_client")
        assert route.call_count == 1  # the refetch for the unknown kid waits 30 s
        moment[0] += 31
        assert ask(client, assertion("st-marys-hospital")).status_code == 200
        assert route.call_count == 2


def test_jwks_fetcher_refreshes_after_its_ttl_and_retries_a_server_error() -> None:
    moment = [0.0]
    fetcher = JwksFetcher(ttl=300, monotonic=lambda: moment[0], retry_wait_max=0.01)
    jwks = {"keys": [public_jwk(KEYS["st-marys-hospital"])]}

    async def scenario() -> None:
        with respx.mock() as mock:
            route = mock.get(JWKS_URL).mock(
                side_effect=[
                    httpx.Response(503),
                    httpx.Response(200, json=jwks),
                    httpx.Response(200, json=jwks),
                ]
            )
            assert await fetcher.keys(JWKS_URL) == jwks["keys"]
            assert route.call_count == 2
            moment[0] += 100
            await fetcher.keys(JWKS_URL)
            assert route.call_count == 2
            moment[0] += 301
            await fetcher.keys(JWKS_URL)
            assert route.call_count == 3

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404),
        httpx.Response(200, content=b"<html>not json</html>"),
        httpx.Response(200, json={"keys": "none"}),
        httpx.Response(200, json={"keys": [{**public_jwk(STRANGER_KEY), "d": "c2VjcmV0"}]}),
        httpx.Response(200, content=b'{"keys": [' + b'{"kty": "EC"},' * 10_000 + b"{}]}"),
    ],
    ids=["404", "not-json", "no-key-list", "private-key", "too-large"],
)
def test_an_unusable_jwks_answer_is_refused(answer: httpx.Response) -> None:
    fetcher = JwksFetcher(retry_wait_max=0.01)

    async def scenario() -> None:
        with respx.mock() as mock:
            mock.get(JWKS_URL).mock(return_value=answer)
            with pytest.raises(JwksUnavailable):
                await fetcher.keys(JWKS_URL)

    asyncio.run(scenario())


# -- replay table --------------------------------------------------------------------------------


def test_the_replay_table_accepts_a_jti_once_per_client_and_purges_expired_rows(
    sql_store: SqlStore,
) -> None:
    guard = SqlReplayGuard(sql_store.engine, purge_every=0)
    later = START + timedelta(minutes=10)
    assert guard.first_use("harbor-clinic", "jti-a", START + timedelta(minutes=5), START)
    assert not guard.first_use("harbor-clinic", "jti-a", START + timedelta(minutes=5), START)
    assert guard.first_use("northside-legal-aid", "jti-a", START + timedelta(minutes=5), START)
    assert guard.first_use("harbor-clinic", "jti-b", later + timedelta(minutes=5), later)

    def rows(client_id: str) -> int:
        with sql_store.engine.connect() as conn:
            query = select(func.count()).where(token_replay.c.client_id == client_id)
            return int(conn.execute(query.select_from(token_replay)).scalar_one())

    assert rows("harbor-clinic") == 1  # jti-a expired and was purged
    assert rows("northside-legal-aid") == 0


# -- bearer authentication on /fhir --------------------------------------------------------------


def assert_invalid_token(response: Any) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="fhir", error="invalid_token"'
    assert response.json()["resourceType"] == "OperationOutcome"


def test_fhir_without_a_token_is_401_with_a_bearer_challenge(gateway: TestClient) -> None:
    assert_invalid_token(gateway.get("/fhir/Organization/riverside-shelter"))
    assert_invalid_token(
        gateway.get("/fhir/Organization/riverside-shelter", headers={"Authorization": "Basic eDp5"})
    )
    assert gateway.get("/fhir/metadata").status_code == 200


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "", "x" * 5000],
    ids=["garbage", "three-dots", "empty", "oversized"],
)
def test_a_garbage_token_is_401(gateway: TestClient, token: str) -> None:
    assert_invalid_token(gateway.get("/fhir/Organization/riverside-shelter", headers=bearer(token)))


def test_an_expired_token_is_401(gateway: TestClient, clock: FrozenClock) -> None:
    token = token_for(gateway)
    url = "/fhir/Organization/riverside-shelter"
    assert gateway.get(url, headers=bearer(token)).status_code == 200
    clock.advance(timedelta(seconds=300 + 61))
    assert_invalid_token(gateway.get(url, headers=bearer(token)))


def test_a_token_signed_by_another_key_is_401(gateway: TestClient, settings: Settings) -> None:
    token = token_for(gateway)
    body = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(body, STRANGER_KEY, algorithm="ES384")
    assert_invalid_token(
        gateway.get("/fhir/Organization/riverside-shelter", headers=bearer(forged))
    )
    ours = load_token_signing_key(settings.keys_dir)
    elsewhere = jwt.encode({**body, "aud": "https://other-gateway.example/fhir"}, ours, "ES384")
    assert_invalid_token(
        gateway.get("/fhir/Organization/riverside-shelter", headers=bearer(elsewhere))
    )
    assertion_as_token = assertion()
    assert_invalid_token(
        gateway.get("/fhir/Organization/riverside-shelter", headers=bearer(assertion_as_token))
    )


def test_a_partner_removed_from_the_directory_loses_access_at_once(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, network: PartnerDirectory
) -> None:
    app = create_app(settings, store=sql_store, clock=clock, partners=network)
    with TestClient(app, base_url=BASE) as client:
        token = token_for(client)
        url = "/fhir/Organization/riverside-shelter"
        assert client.get(url, headers=bearer(token)).status_code == 200
        tokens_of(client).directory = network.without("riverside-shelter")
        assert_invalid_token(client.get(url, headers=bearer(token)))
    restarted = create_app(
        settings, store=sql_store, clock=clock, partners=network.without("riverside-shelter")
    )
    with TestClient(restarted, base_url=BASE) as client:
        assert_invalid_token(client.get(url, headers=bearer(token)))


def test_an_explicit_authenticator_still_wins_over_partners(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, network: PartnerDirectory
) -> None:
    from gateway.access.requester import Requester
    from gateway.disclose.deps import fixed_requester

    admin = fixed_requester(
        Requester(partner_id="gateway-admin", kind="admin", scopes=("system/*.cruds",))
    )
    app = create_app(settings, store=sql_store, clock=clock, partners=network, authenticate=admin)
    with TestClient(app, base_url=BASE) as client:
        assert client.get("/fhir/Organization/harbor-clinic").status_code == 200


def test_without_partners_the_token_endpoint_refuses_everyone(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock
) -> None:
    with TestClient(create_app(settings, store=sql_store, clock=clock), base_url=BASE) as client:
        oauth_error(ask(client, assertion()), 401, "invalid_client")
        assert_invalid_token(client.get("/fhir/Organization/riverside-shelter"))


# -- audit -----------------------------------------------------------------------------------


def _events(client: TestClient) -> list[dict[str, Any]]:
    chain = client.app.state.gateway.audit  # type: ignore[attr-defined]
    return [orjson.loads(row[2]) for row in chain.rows()]


def test_an_issued_token_is_audited_with_who_and_why(gateway: TestClient) -> None:
    token_for(gateway)
    (event,) = [e for e in _events(gateway) if e["outcome"] == "0"]
    assert "token-issued" in {c["code"] for c in event["subtype"]}
    (agent,) = [a for a in event["agent"] if a["requestor"]]
    assert agent["who"]["reference"] == "Organization/riverside-shelter"
    assert agent["purposeOfUse"]


def test_a_refused_token_request_is_audited_by_reason_never_with_the_assertion(
    gateway: TestClient,
) -> None:
    forged = sign(claims(aud="https://elsewhere.example/token"), KEYS["riverside-shelter"])
    oauth_error(ask(gateway, forged), 401, "invalid_client")
    gateway.app.state.gateway.audit.fold_noise()  # type: ignore[attr-defined]
    (event,) = _events(gateway)
    assert event["outcome"] == "4"
    assert event["outcomeDesc"].startswith("token:")
    assert forged not in orjson.dumps(event).decode()
