"""The gateway's SMART Backend Services client against a mocked hospital (respx): discovery, the
client assertion (verified with the public key), the token cache, one refresh on 401, a token
that never leaves the FHIR base, and errors that never echo the server, the assertion or the
token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapters._http import SourceRefused, SourceUnavailable
from adapters.smart import (
    ASSERTION_TYPE,
    SmartBackendAuth,
    jwk_thumbprint,
    load_client_key,
    public_jwk,
    smart_fhir_client,
)
from tests.adapters.test_http_client import FakeTime

BASE = "https://fhir.metro-general.example/r4"
TOKEN_URL = "https://auth.metro-general.example/oauth2/token"
CLIENT_ID = "care-gateway-client"
SCOPE = "system/Patient.rs system/ServiceRequest.rs system/CarePlan.rs"
EC_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def auth(time: FakeTime, *, discover: bool = False, key: object = EC_KEY) -> SmartBackendAuth:
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    jwk = public_jwk(key)
    return SmartBackendAuth(
        client_id=CLIENT_ID,
        private_key=key,
        key_id=jwk["kid"],
        algorithm=jwk["alg"],
        scope=SCOPE,
        token_endpoint=None if discover else TOKEN_URL,
        fhir_base=BASE,
        sleep=time.sleep,
        clock=time.clock,
    )


def token_answer(token: str = "tok-1", expires_in: int = 300) -> httpx.Response:
    return httpx.Response(
        200, json={"access_token": token, "token_type": "bearer", "expires_in": expires_in}
    )


def form_of(request: httpx.Request) -> dict[str, str]:
    parsed = parse_qs(request.content.decode())
    assert all(len(v) == 1 for v in parsed.values())
    return {k: v[0] for k, v in parsed.items()}


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def test_the_client_assertion_is_signed_and_carries_the_claims_smart_requires(
    mock: respx.MockRouter,
) -> None:
    time = FakeTime()
    token_route = mock.post(TOKEN_URL).mock(return_value=token_answer())
    auth(time).token()
    form = form_of(token_route.calls.last.request)
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == SCOPE
    assert form["client_assertion_type"] == ASSERTION_TYPE
    assertion = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header == {"alg": "ES384", "kid": public_jwk(EC_KEY)["kid"], "typ": "JWT"}
    claims = jwt.decode(
        assertion,
        EC_KEY.public_key(),
        algorithms=["ES384"],
        audience=TOKEN_URL,
        issuer=CLIENT_ID,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["sub"] == CLIENT_ID
    assert claims["iat"] == int(time.now)
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert len(claims["jti"]) >= 16


def test_a_signature_from_another_key_does_not_verify(mock: respx.MockRouter) -> None:
    route = mock.post(TOKEN_URL).mock(return_value=token_answer())
    auth(FakeTime()).token()
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            form_of(route.calls.last.request)["client_assertion"],
            other,
            algorithms=["ES384"],
            audience=TOKEN_URL,
            options={"verify_exp": False},
        )


def test_rs384_keys_sign_rs384_assertions(mock: respx.MockRouter) -> None:
    route = mock.post(TOKEN_URL).mock(return_value=token_answer())
    auth(FakeTime(), key=RSA_KEY).token()
    assertion = form_of(route.calls.last.request)["client_assertion"]
    assert jwt.get_unverified_header(assertion)["alg"] == "RS384"
    jwt.decode(
        assertion,
        RSA_KEY.public_key(),
        algorithms=["RS384"],
        audience=TOKEN_URL,
        options={"verify_exp": False, "verify_iat": False},
    )


def test_every_token_request_draws_a_new_jti(mock: respx.MockRouter) -> None:
    time = FakeTime()
    route = mock.post(TOKEN_URL).mock(return_value=token_answer(expires_in=120))
    client = auth(time)
    client.token()
    time.now += 200  # past its use
    client.token()
    jtis = [
        jwt.decode(form_of(call.request)["client_assertion"], options={"verify_signature": False})[
            "jti"
        ]
        for call in route.calls
    ]
    assert len(jtis) == 2
    assert jtis[0] != jtis[1]


def test_discovery_reads_the_token_endpoint_from_the_smart_configuration(
    mock: respx.MockRouter,
) -> None:
    config = mock.get(f"{BASE}/.well-known/smart-configuration").mock(
        return_value=httpx.Response(
            200,
            json={
                "token_endpoint": TOKEN_URL,
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            },
        )
    )
    route = mock.post(TOKEN_URL).mock(return_value=token_answer())
    client = auth(FakeTime(), discover=True)
    assert client.token().value == "tok-1"
    assert "authorization" not in config.calls.last.request.headers  # discovery sends no token
    claims = jwt.decode(
        form_of(route.calls.last.request)["client_assertion"], options={"verify_signature": False}
    )
    assert claims["aud"] == TOKEN_URL
    client.invalidate()
    client.token()
    assert config.call_count == 1  # discovered once


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://auth.metro-general.example/token",  # plain http off loopback
        "ftp://auth.metro-general.example/token",
        "https://auth.metro-general.example/token?client=x",
        "/relative/token",
    ],
)
def test_a_discovered_endpoint_that_is_not_https_or_is_odd_is_refused(
    mock: respx.MockRouter, endpoint: str
) -> None:
    mock.get(f"{BASE}/.well-known/smart-configuration").mock(
        return_value=httpx.Response(200, json={"token_endpoint": endpoint})
    )
    token = mock.post(url__regex=r".*").mock(return_value=token_answer())
    with pytest.raises(SourceRefused) as refused:
        auth(FakeTime(), discover=True).token()
    assert "smart-configuration" in refused.value.message
    assert "metro-general" not in refused.value.message
    assert token.call_count == 0


def test_a_server_that_does_not_take_private_key_jwt_is_refused(mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/.well-known/smart-configuration").mock(
        return_value=httpx.Response(
            200,
            json={
                "token_endpoint": TOKEN_URL,
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            },
        )
    )
    with pytest.raises(SourceRefused, match="private_key_jwt"):
        auth(FakeTime(), discover=True).token()


def test_a_discovery_answer_that_is_not_json_is_refused(mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/.well-known/smart-configuration").mock(
        return_value=httpx.Response(200, content=b"<html>Maria Garcia</html>")
    )
    with pytest.raises(SourceRefused) as refused:
        auth(FakeTime(), discover=True).token()
    assert "Maria" not in str(refused.value)


def test_the_token_is_cached_until_expires_in_minus_the_margin(mock: respx.MockRouter) -> None:
    time = FakeTime()
    route = mock.post(TOKEN_URL).mock(
        side_effect=[token_answer("tok-1", 300), token_answer("tok-2", 300)]
    )
    client = auth(time)
    assert client.token().value == "tok-1"
    time.now += 239
    assert client.token().value == "tok-1"
    assert route.call_count == 1
    time.now += 1  # 300 s less the 60 s margin
    assert client.token().value == "tok-2"
    assert route.call_count == 2


def test_requests_carry_the_bearer_token_and_a_401_refreshes_it_once(
    mock: respx.MockRouter,
) -> None:
    time = FakeTime()
    mock.post(TOKEN_URL).mock(side_effect=[token_answer("tok-1"), token_answer("tok-2")])
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        if request.headers["authorization"] == "Bearer tok-1":
            return httpx.Response(401)
        return httpx.Response(200, json={"resourceType": "Bundle"})

    mock.get(f"{BASE}/Patient").mock(side_effect=answer)
    client = smart_fhir_client(
        BASE,
        client_id=CLIENT_ID,
        private_key=EC_KEY,
        key_id="k1",
        algorithm="ES384",
        scope=SCOPE,
        token_endpoint=TOKEN_URL,
        sleep=time.sleep,
        clock=time.clock,
    )
    assert client.get("Patient").status == 200
    assert seen == ["Bearer tok-1", "Bearer tok-2"]


def test_a_second_401_is_the_answer_not_a_loop(mock: respx.MockRouter) -> None:
    time = FakeTime()
    tokens = mock.post(TOKEN_URL).mock(
        side_effect=[token_answer("tok-1"), token_answer("tok-2"), token_answer("tok-3")]
    )
    resource = mock.get(f"{BASE}/Patient").mock(return_value=httpx.Response(401))
    client = smart_fhir_client(
        BASE,
        client_id=CLIENT_ID,
        private_key=EC_KEY,
        key_id="k1",
        algorithm="ES384",
        scope=SCOPE,
        token_endpoint=TOKEN_URL,
        sleep=time.sleep,
        clock=time.clock,
    )
    with pytest.raises(SourceRefused) as refused:
        client.get("Patient")
    assert refused.value.status == 401
    assert resource.call_count == 2
    assert tokens.call_count == 2


def test_the_token_is_never_sent_outside_the_fhir_base(mock: respx.MockRouter) -> None:
    time = FakeTime()
    mock.post(TOKEN_URL).mock(return_value=token_answer("tok-secret"))
    elsewhere = mock.get(url__regex=r"https://evil\.example/.*").mock(
        return_value=httpx.Response(200, json={})
    )
    sibling = mock.get("https://fhir.metro-general.example/other/Patient").mock(
        return_value=httpx.Response(200, json={})
    )
    client = smart_fhir_client(
        BASE,
        client_id=CLIENT_ID,
        private_key=EC_KEY,
        key_id="k1",
        algorithm="ES384",
        scope=SCOPE,
        token_endpoint=TOKEN_URL,
        sleep=time.sleep,
        clock=time.clock,
    )
    for url in (
        "https://evil.example/r4/Patient",
        "https://fhir.metro-general.example/other/Patient",
    ):
        with pytest.raises(SourceRefused, match="outside the FHIR base"):
            client.get(url)
    assert elsewhere.call_count == 0
    assert sibling.call_count == 0


@pytest.mark.parametrize("status", [400, 401])
def test_a_token_refusal_names_the_endpoint_path_and_the_oauth_code_only(
    mock: respx.MockRouter, status: int
) -> None:
    mock.post(TOKEN_URL).mock(
        return_value=httpx.Response(
            status,
            json={
                "error": "invalid_client",
                "error_description": "assertion for Maria Garcia DOB 1990-01-01 rejected",
            },
        )
    )
    with pytest.raises(SourceRefused) as refused:
        auth(FakeTime()).token()
    message = str(refused.value)
    assert "/oauth2/token" in message
    assert "invalid_client" in message
    assert "Maria" not in message
    assert "1990" not in message
    assert "eyJ" not in message
    assert refused.value.status == status


def test_an_error_code_rfc_6749_does_not_define_is_not_repeated(mock: respx.MockRouter) -> None:
    mock.post(TOKEN_URL).mock(
        return_value=httpx.Response(400, json={"error": "patient_Maria_Garcia_unknown"})
    )
    with pytest.raises(SourceRefused) as refused:
        auth(FakeTime()).token()
    assert "Maria" not in str(refused.value)
    assert "no known code" in str(refused.value)


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "bearer", "expires_in": 300},
        {"access_token": "t", "token_type": "mac", "expires_in": 300},
        {"access_token": "t", "token_type": "bearer"},
        {"access_token": "t", "token_type": "bearer", "expires_in": -5},
        {"access_token": "line\nbreak", "token_type": "bearer", "expires_in": 300},
        ["not", "an", "object"],
    ],
)
def test_an_unusable_token_answer_is_refused_without_quoting_it(
    mock: respx.MockRouter, body: object
) -> None:
    mock.post(TOKEN_URL).mock(return_value=httpx.Response(200, json=body))
    with pytest.raises(SourceRefused) as refused:
        auth(FakeTime()).token()
    assert "line" not in str(refused.value)
    assert "/oauth2/token" in str(refused.value)


def test_a_token_endpoint_503_is_not_retried_with_the_same_assertion(
    mock: respx.MockRouter,
) -> None:
    time = FakeTime()
    route = mock.post(TOKEN_URL).mock(return_value=httpx.Response(503))
    with pytest.raises(SourceUnavailable) as failed:
        auth(time).token()
    assert route.call_count == 1
    assert failed.value.retry == "idempotent"  # the resource request around it may retry


def test_a_resource_request_retries_a_failed_token_request_with_a_new_assertion(
    mock: respx.MockRouter,
) -> None:
    time = FakeTime()
    tokens = mock.post(TOKEN_URL).mock(side_effect=[httpx.Response(503), token_answer("tok-9")])
    mock.get(f"{BASE}/Patient").mock(return_value=httpx.Response(200, json={}))
    client = smart_fhir_client(
        BASE,
        client_id=CLIENT_ID,
        private_key=EC_KEY,
        key_id="k1",
        algorithm="ES384",
        scope=SCOPE,
        token_endpoint=TOKEN_URL,
        sleep=time.sleep,
        clock=time.clock,
    )
    assert client.get("Patient").status == 200
    jtis = {
        jwt.decode(form_of(c.request)["client_assertion"], options={"verify_signature": False})[
            "jti"
        ]
        for c in tokens.calls
    }
    assert len(jtis) == 2


def test_the_auth_object_and_its_token_show_no_secret(mock: respx.MockRouter) -> None:
    mock.post(TOKEN_URL).mock(return_value=token_answer("s3cr3t-access-token"))
    client = auth(FakeTime())
    token = client.token()
    for shown in (repr(client), repr(token), str(token)):
        assert "s3cr3t" not in shown
        assert CLIENT_ID not in shown


def test_load_client_key_reads_pem_and_names_the_kid_by_thumbprint() -> None:
    pem = EC_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key, kid, algorithm = load_client_key(pem)
    assert algorithm == "ES384"
    jwk = public_jwk(key)
    assert kid == jwk["kid"] == jwk_thumbprint(jwk)
    assert "d" not in jwk  # never a private member
    # The thumbprint is the one PyJWT's own key export hashes to (RFC 7638 member order).
    exported = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    assert jwk_thumbprint(exported) == kid
    rsa_pem = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert load_client_key(rsa_pem)[2] == "RS384"


def test_rfc_7638_thumbprint_of_the_rfc_example_key() -> None:
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6t"
        "Soc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR"
        "0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
        "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
    ],
)
def test_keys_too_weak_or_on_the_wrong_curve_are_refused(make: object) -> None:
    assert callable(make)
    key = make()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError):
        load_client_key(pem)


def test_a_pem_that_is_not_a_key_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError) as refused:
        load_client_key(b"-----BEGIN PRIVATE KEY-----\nMariaGarcia\n-----END PRIVATE KEY-----\n")
    assert "Maria" not in str(refused.value)


def test_an_algorithm_that_does_not_fit_the_key_is_refused() -> None:
    with pytest.raises(ValueError):
        SmartBackendAuth(
            client_id=CLIENT_ID,
            private_key=EC_KEY,
            key_id="k",
            algorithm="RS384",
            scope=SCOPE,
            token_endpoint=TOKEN_URL,
        )


def test_a_configured_endpoint_must_be_https_off_loopback() -> None:
    with pytest.raises(ValueError):
        SmartBackendAuth(
            client_id=CLIENT_ID,
            private_key=EC_KEY,
            key_id="k",
            algorithm="ES384",
            scope=SCOPE,
            token_endpoint="http://auth.metro-general.example/token",
        )
