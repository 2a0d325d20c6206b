"""The gateway as a SMART Backend Services client (SMART App Launch 2.x, "Backend Services"):
an ``httpx.Auth`` that gets an access token from a hospital's authorisation server with the
``client_credentials`` grant and a ``private_key_jwt`` client assertion (RFC 7523), caches it,
and puts it on the requests of the one ``SourceClient`` it is given to.

- **Discovery.** Without ``token_endpoint``, ``GET {fhir_base}/.well-known/smart-configuration``
  (no token) names it. The endpoint must be https, or http to loopback only (the rule of
  ``adapters/_http.py``), and carry no query, fragment or credentials.
- **The assertion.** A JWT signed ES384 (P-384) or RS384: header ``alg``, ``kid`` (the RFC 7638
  thumbprint of the public key unless told otherwise), ``typ: JWT``; claims ``iss`` = ``sub`` =
  the client id, ``aud`` = the token endpoint URL, ``iat``, ``exp`` at most five minutes on, and a
  ``jti`` drawn afresh for every token request (a server refuses a replayed one).
- **The token** is cached until ``expires_in`` minus a margin. A 401 from the resource server
  fetches a new token once and retries the request once; a second 401 is the answer.
- **The token goes nowhere else.** Given ``fhir_base``, a request outside it (another scheme,
  host, port or base path) is refused before anything is sent.
- **Errors** name the endpoint's path and, for a refusal, the OAuth ``error`` code when it is one
  RFC 6749 defines: never ``error_description`` (it may echo input), the assertion or a token.
  Nothing here logs.

A 503 or a timeout of the token endpoint surfaces as ``SourceUnavailable``: raised inside the
resource request's auth flow, it earns that request's retries, each with a new assertion.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlencode

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapters._http import (
    HttpPolicy,
    SourceClient,
    SourceRefused,
    SourceUnavailable,
)

Algorithm = Literal["ES384", "RS384"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DISCOVERY_PATH: Final = ".well-known/smart-configuration"
MAX_ASSERTION_LIFETIME: Final = 300
# RFC 6749 section 5.2 and RFC 6750: the only codes repeated in an error message.
OAUTH_ERRORS: Final = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_token",
        "insufficient_scope",
        "temporarily_unavailable",
        "server_error",
    }
)
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
_MAX_TOKEN_CHARS: Final = 16_384
_TOKEN_ANSWER_BYTES: Final = 65_536
_MIN_RSA_BITS: Final = 2048


# --------------------------------------------------------------------------------------------
# Keys


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _algorithm_of(private_key: Any) -> Algorithm:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if not isinstance(private_key.curve, ec.SECP384R1):
            raise ValueError("an EC client key must be on P-384 (ES384)")
        return "ES384"
    if isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < _MIN_RSA_BITS:
            raise ValueError("an RSA client key must have at least 2048 bits")
        return "RS384"
    raise ValueError("a client key must be EC P-384 or RSA")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 thumbprint (SHA-256, base64url) of an EC or RSA public JWK."""
    if jwk.get("kty") == "EC":
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    elif jwk.get("kty") == "RSA":
        members = {k: jwk[k] for k in ("e", "kty", "n")}
    else:
        raise ValueError("a thumbprint is defined here for EC and RSA keys only")
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(canonical).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def public_jwk(private_key: PrivateKey) -> dict[str, Any]:
    """The public half as a JWK, to register at the hospital: ``kty`` and its members, ``kid``
    (the RFC 7638 thumbprint), ``alg`` and ``use: sig``. Never any private member."""
    algorithm = _algorithm_of(private_key)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        numbers = private_key.public_key().public_numbers()
        jwk: dict[str, Any] = {
            "kty": "EC",
            "crv": "P-384",
            "x": base64.urlsafe_b64encode(numbers.x.to_bytes(48, "big")).rstrip(b"=").decode(),
            "y": base64.urlsafe_b64encode(numbers.y.to_bytes(48, "big")).rstrip(b"=").decode(),
        }
    else:
        rsa_numbers = private_key.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": _b64url_uint(rsa_numbers.n), "e": _b64url_uint(rsa_numbers.e)}
    return {**jwk, "kid": jwk_thumbprint(jwk), "alg": algorithm, "use": "sig"}


def load_client_key(pem: bytes, password: bytes | None = None) -> tuple[PrivateKey, str, Algorithm]:
    """A PEM private key (PKCS#8 or traditional) as ``(key, kid, algorithm)``: EC P-384 signs
    ES384, RSA (2048 bits or more) RS384; ``kid`` is the public key's RFC 7638 thumbprint.
    ``ValueError`` (quoting nothing of the PEM) for anything else."""
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError) as exc:
        raise ValueError("not a readable PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("a client key must be EC P-384 or RSA")
    algorithm = _algorithm_of(key)
    return key, public_jwk(key)["kid"], algorithm


# --------------------------------------------------------------------------------------------
# Endpoints


def checked_endpoint(url: str, what: str = "token endpoint") -> httpx.URL:
    """An absolute https URL (http to loopback only), without query, fragment or credentials."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ValueError(f"the {what} is not a URL") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"the {what} must be an absolute http(s) URL")
    if parsed.scheme == "http" and parsed.host not in _LOOPBACK:
        raise ValueError(f"the {what} must be https (plain http to loopback only)")
    if parsed.query or parsed.fragment or parsed.userinfo:
        raise ValueError(f"the {what} must carry no query, fragment or credentials")
    return parsed


def _origin(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{host}{port}"


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port or _default_port(a)) == (
        b.scheme,
        b.host,
        b.port or _default_port(b),
    )


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def under_base(url: httpx.URL, base: httpx.URL) -> bool:
    """Whether ``url`` is on ``base``'s scheme, host and port and at or below its path."""
    if not _same_origin(url, base) or url.userinfo:
        return False
    root = base.path.rstrip("/")
    return url.path == root or url.path.startswith(f"{root}/")


class _TokenClient(SourceClient):
    """The shared client, letting a token endpoint's 400 and 401 through with their body: their
    OAuth ``error`` code is all that is read of them."""

    def judge(self, method: str, path: str, response: httpx.Response) -> None:
        if response.status_code in (400, 401):
            return
        super().judge(method, path, response)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A token and when to stop using it (the clock's seconds); its repr hides the value."""

    value: str = field(repr=False)
    usable_until: float
    scope: str = ""


class TokenRefused(SourceRefused):
    """The authorisation server would not give a token (or could not be discovered): no request
    of this client can succeed until the registration is fixed."""


def _refused(message: str, *, method: str, path: str, status: int | None) -> SourceRefused:
    return TokenRefused(message, method=method, path=path, status=status)


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services for a ``SourceClient`` (synchronous; thread-safe).

    ``token_endpoint`` or ``fhir_base`` (for discovery) must be given; with ``fhir_base`` the
    token is sent only under it. ``policy``, ``transport``, ``sleep`` and ``clock`` (epoch
    seconds) are the shared client's; ``margin`` is how long before ``expires_in`` a token is
    renewed."""

    requires_request_body = False
    requires_response_body = False

    def __init__(
        self,
        *,
        client_id: str,
        private_key: PrivateKey,
        key_id: str,
        algorithm: Algorithm,
        scope: str,
        token_endpoint: str | None = None,
        fhir_base: str | None = None,
        policy: HttpPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        margin: float = 60.0,
        assertion_lifetime: int = MAX_ASSERTION_LIFETIME,
    ) -> None:
        if not client_id or any(c in client_id for c in "\r\n"):
            raise ValueError("client_id must be a non-empty single line")
        if not scope or any(c in scope for c in "\r\n"):
            raise ValueError("scope must be a non-empty single line")
        if algorithm not in ("ES384", "RS384") or _algorithm_of(private_key) != algorithm:
            raise ValueError("the algorithm does not fit the key (ES384: EC P-384, RS384: RSA)")
        if not key_id:
            raise ValueError("key_id must be given")
        if not 1 <= assertion_lifetime <= MAX_ASSERTION_LIFETIME:
            raise ValueError("assertion_lifetime must be between 1 and 300 seconds")
        if token_endpoint is None and fhir_base is None:
            raise ValueError("give the token endpoint, or the FHIR base to discover it")
        self.client_id = client_id
        self.scope = scope
        self._key = private_key
        self._kid = key_id
        self._algorithm = algorithm
        self._endpoint = None if token_endpoint is None else checked_endpoint(token_endpoint)
        self._base = None if fhir_base is None else checked_endpoint(fhir_base, "FHIR base")
        self._policy = policy or HttpPolicy(max_response_bytes=_TOKEN_ANSWER_BYTES)
        self._transport = transport
        self._sleep = sleep
        self._clock = clock
        self._margin = margin
        self._lifetime = assertion_lifetime
        self._lock = threading.Lock()
        self._token: AccessToken | None = None
        self._clients: dict[str, SourceClient] = {}
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id=<{len(self.client_id)} chars>, token=<hidden>)"

    # the flow -----------------------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._base is not None and not under_base(request.url, self._base):
            raise SourceRefused(
                "a request outside the FHIR base was refused; no token sent",
                method=request.method,
                path=request.url.path[:200],
                status=None,
            )
        token = self.token()
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if response.status_code == 401:
            fresh = self._renew(token)
            request.headers["Authorization"] = f"Bearer {fresh.value}"
            yield request

    def token(self) -> AccessToken:
        """The cached token, or a new one when there is none or it is past its use."""
        with self._lock:
            if self._token is None or self._clock() >= self._token.usable_until:
                self._token = self._fetch()
            return self._token

    def _renew(self, stale: AccessToken) -> AccessToken:
        with self._lock:
            if self._token is None or self._token is stale:
                self._token = self._fetch()  # another thread may have renewed it already
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token (the next request fetches one)."""
        with self._lock:
            self._token = None

    # discovery ----------------------------------------------------------------------------

    def token_endpoint(self) -> httpx.URL:
        """The configured endpoint, or the one the FHIR server's SMART configuration names."""
        if self._endpoint is None:
            assert self._base is not None
            self._endpoint = self._discover(self._base)
        return self._endpoint

    def _client(self, origin: str, base: str | None = None) -> SourceClient:
        key = base or origin
        if key not in self._clients:
            self._clients[key] = _TokenClient(
                key,
                policy=self._policy,
                transport=self._transport,
                sleep=self._sleep,
                clock=self._clock,
            )
        return self._clients[key]

    def _discover(self, base: httpx.URL) -> httpx.URL:
        client = self._client(_origin(base), str(base).rstrip("/"))
        shown = client.shown_path(DISCOVERY_PATH)
        response = client.get(DISCOVERY_PATH)
        bad = _refused(
            f"GET {shown} is not a SMART configuration with a usable token_endpoint",
            method="GET",
            path=shown,
            status=response.status,
        )
        if response.status != 200:
            raise bad
        try:
            config = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise bad from None
        if not isinstance(config, dict) or not isinstance(config.get("token_endpoint"), str):
            raise bad
        methods = config.get("token_endpoint_auth_methods_supported")
        if isinstance(methods, list) and "private_key_jwt" not in methods:
            raise _refused(
                f"GET {shown}: the server does not take private_key_jwt",
                method="GET",
                path=shown,
                status=response.status,
            )
        try:
            return checked_endpoint(config["token_endpoint"])
        except ValueError:
            raise bad from None

    # the token request --------------------------------------------------------------------

    def assertion(self, audience: str) -> str:
        """A new client assertion for ``audience`` (the token endpoint URL)."""
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + self._lifetime,
            "jti": secrets.token_urlsafe(24),
        }
        headers = {"kid": self._kid, "typ": "JWT"}
        return jwt.encode(claims, self._key, algorithm=self._algorithm, headers=headers)

    def _fetch(self) -> AccessToken:
        endpoint = self.token_endpoint()
        client = self._client(_origin(endpoint))
        path = endpoint.raw_path.decode("ascii") or "/"
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(str(endpoint)),
        }
        asked = self._clock()
        try:
            response = client.request(
                "POST",
                path,
                content=urlencode(form).encode("ascii"),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        except SourceUnavailable as exc:
            # Not retried here (the same assertion again would be a replayed jti); marked so
            # that the resource request around it retries, and a retry signs a new assertion.
            raise SourceUnavailable(
                exc.message,
                method=exc.method,
                path=exc.path,
                status=exc.status,
                attempts=exc.attempts,
                cause=exc.cause,
                retry="idempotent",
                server_wait=exc.server_wait,
            ) from None
        shown = response.path
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if response.status in (400, 401):
            code = body.get("error") if isinstance(body, dict) else None
            named = code if isinstance(code, str) and code in OAUTH_ERRORS else "no known code"
            raise _refused(
                f"POST {shown} answered {response.status} ({named})",
                method="POST",
                path=shown,
                status=response.status,
            )
        token = self._read_token(body, shown, response.status, asked)
        self.tokens_fetched += 1
        return token

    def _read_token(self, body: Any, shown: str, status: int, asked: float) -> AccessToken:
        def bad(what: str) -> SourceRefused:
            return _refused(
                f"POST {shown} answered a token response {what}",
                method="POST",
                path=shown,
                status=status,
            )

        if not isinstance(body, dict):
            raise bad("that is not a JSON object")
        value = body.get("access_token")
        if (
            not isinstance(value, str)
            or not value
            or len(value) > _MAX_TOKEN_CHARS
            or not all("\x21" <= c <= "\x7e" for c in value)
        ):
            raise bad("without a usable access_token")
        kind = body.get("token_type")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise bad("whose token_type is not bearer")
        lifetime = body.get("expires_in")
        if (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, int | float)
            or not 0 < lifetime <= 86_400
        ):
            raise bad("without a usable expires_in")
        scope = body.get("scope")
        usable = asked + lifetime - min(self._margin, lifetime / 2)
        return AccessToken(value, usable, scope if isinstance(scope, str) else "")

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def smart_fhir_client(
    base_url: str,
    *,
    client_id: str,
    private_key: PrivateKey,
    key_id: str,
    algorithm: Algorithm,
    scope: str,
    token_endpoint: str | None = None,
    policy: HttpPolicy | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> SourceClient:
    """The shared client for one FHIR server, authenticated with SMART Backend Services; the
    token is sent only under ``base_url``."""
    auth = SmartBackendAuth(
        client_id=client_id,
        private_key=private_key,
        key_id=key_id,
        algorithm=algorithm,
        scope=scope,
        token_endpoint=token_endpoint,
        fhir_base=base_url,
        transport=transport,
        sleep=sleep,
        clock=clock,
    )
    client = SourceClient(
        base_url,
        policy=policy,
        auth=auth,
        headers={"Accept": "application/fhir+json"},
        transport=transport,
        sleep=sleep,
        clock=clock,
    )
    return client


__all__ = [
    "ASSERTION_TYPE",
    "OAUTH_ERRORS",
    "AccessToken",
    "Algorithm",
    "PrivateKey",
    "SmartBackendAuth",
    "TokenRefused",
    "checked_endpoint",
    "jwk_thumbprint",
    "load_client_key",
    "public_jwk",
    "smart_fhir_client",
    "under_base",
]
