"""SMART Backend Services: the token endpoint, its discovery document, and bearer authentication.

``POST /auth/token`` takes a client-credentials grant authenticated by a signed client assertion
(``private_key_jwt``, RS384 or ES384, RFC 7523) and answers a short-lived access token: a JWT
signed ES384 with the gateway's own key (``KEYS_DIR/token-signing-key.pem``, header ``kid`` its
JWK thumbprint). ``BearerAuth`` checks that token on every ``/fhir`` request and yields the
``Requester``. The token keys are a list (``gateway keys rotate --token``): the newest signs,
and a token verifies under the key its ``kid`` names among every public key of
``KEYS_DIR/token-signing-key.pub.pem``, so tokens issued before a rotation stay valid until they
expire. An unknown ``kid`` re-reads that file (at most every few seconds), so that a gateway
still running learns a key another one, restarted after the rotation, signs with.

Refusals say no more than RFC 6749/7523 allow: every failure of client authentication (unknown
client, bad signature, wrong audience, expired, replayed ``jti``, …) answers the same
``invalid_client`` body; which check failed goes to the log as a fixed reason code, never with
the assertion or any claim value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, delete, insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from gateway.access.requester import Requester
from gateway.access.scopes import ScopeGrant, parse_scopes, supported_scopes
from gateway.audit.events import Activity, Actor
from gateway.clock import Clock
from gateway.disclose.rest import FhirRoute, append_audit
from gateway.errors import ServiceUnavailable, Unauthorized
from gateway.keys import TOKEN_KEYS, KeyMaterialError
from gateway.partners import (
    Partner,
    PartnerDirectory,
    check_public_jwk,
    jwk_thumbprint,
    public_jwk,
)
from gateway.settings import Settings
from gateway.store.schema import token_replay
from gateway.vocabulary.dates import stamp

logger = logging.getLogger("gateway.auth")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
ACCESS_TOKEN_ALGORITHM = "ES384"  # noqa: S105 (an algorithm name)
ACCESS_TOKEN_SECONDS = 300
MAX_ASSERTION_SECONDS = 300
SKEW_SECONDS = 60
MAX_FORM_BYTES = 16 * 1024
MAX_ASSERTION_CHARS = 8 * 1024
MAX_TOKEN_CHARS = 4 * 1024
MAX_JTI_CHARS = 255
PURPOSE_SYSTEMS = (
    "urn:oid:2.16.840.1.113883.5.8#",
    "http://terminology.hl7.org/CodeSystem/v3-PurposeOfUse#",
)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fhir", error="invalid_token"'}
GENERIC_CLIENT_ERROR = "client authentication failed"


class OAuthError(Exception):
    """An OAuth error answer (RFC 6749 section 5.2). ``reason`` is for the log only."""

    def __init__(
        self, error: str, description: str, *, status: int = 400, reason: str = ""
    ) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.status = status
        self.reason = reason or error


UNAVAILABLE = OAuthError(
    "temporarily_unavailable", "the service cannot issue tokens now", status=503
)


def client_refused(reason: str) -> OAuthError:
    """Every failure of client authentication looks the same to the client."""
    return OAuthError("invalid_client", GENERIC_CLIENT_ERROR, status=401, reason=reason)


# -- replay protection ---------------------------------------------------------------------------


class ReplayGuard(Protocol):
    waits_on_network: bool

    def first_use(self, client_id: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        """Record (client_id, jti); False when it was recorded before."""
        ...


class SqlReplayGuard:
    """``token_replay`` rows with a unique (client_id, jti): insert-or-fail in a transaction of
    its own, so a replay is caught across restarts and across instances sharing the database.
    Expired rows are purged now and then (at most once per ``purge_every`` seconds)."""

    def __init__(self, engine: Engine, *, purge_every: float = 60.0) -> None:
        self._engine = engine
        self._purge_every = purge_every
        self._purged_at = float("-inf")
        self.waits_on_network = engine.dialect.name != "sqlite"

    def first_use(self, client_id: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        row = {"client_id": client_id, "jti": jti, "expires_at": stamp(expires_at)}
        try:
            with self._engine.connect() as conn:
                conn = conn.execution_options(gateway_write=True)
                with conn.begin():
                    conn.execute(insert(token_replay).values(**row))
        except IntegrityError:
            return False
        self._maybe_purge(now)
        return True

    def _maybe_purge(self, now: datetime) -> None:
        moment = time.monotonic()
        if moment - self._purged_at < self._purge_every:
            return
        self._purged_at = moment
        try:
            with self._engine.connect() as conn:
                conn = conn.execution_options(gateway_write=True)
                with conn.begin():
                    conn.execute(delete(token_replay).where(token_replay.c.expires_at < stamp(now)))
        except SQLAlchemyError as exc:  # purging is housekeeping; the insert already held
            logger.warning("token_replay purge failed (%s)", type(exc).__name__)


class MemoryReplayGuard:
    """For an app on the in-memory store (unit tests): one process, no restarts."""

    waits_on_network = False

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], datetime] = {}

    def first_use(self, client_id: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        self._seen = {k: v for k, v in self._seen.items() if v >= now}
        if (client_id, jti) in self._seen:
            return False
        self._seen[(client_id, jti)] = expires_at
        return True


# -- partner keys --------------------------------------------------------------------------------


class JwksUnavailable(Exception):
    """A partner's JWKS could not be fetched or is not usable."""


class _Retryable(Exception):
    pass


class JwksFetcher:
    """Fetches ``jwks_url`` key sets with httpx: ``timeout`` seconds, one retry with backoff and
    jitter (tenacity), cached per URL for ``ttl`` seconds; ``refresh`` (an unknown ``kid``)
    re-fetches, but a URL is never fetched more often than every ``min_interval`` seconds."""

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        min_interval: float = 30.0,
        timeout: float = 5.0,
        max_bytes: int = 64 * 1024,
        retry_wait_max: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.min_interval = min_interval
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.retry_wait_max = retry_wait_max
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._attempted: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def keys(self, url: str, *, refresh: bool = False) -> list[dict[str, Any]]:
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            now = self._monotonic()
            cached = self._cache.get(url)
            fresh = cached is not None and now - cached[0] < self.ttl
            if cached is not None and fresh and not refresh:
                return cached[1]
            attempted = self._attempted.get(url)
            if attempted is not None and now - attempted < self.min_interval:
                if cached is not None and fresh:
                    return cached[1]
                raise JwksUnavailable("fetched too recently")
            self._attempted[url] = now
            try:
                keys = await self._fetch(url)
            except JwksUnavailable:
                if cached is not None and fresh:
                    return cached[1]
                raise
            self._cache[url] = (self._monotonic(), keys)
            return keys

    async def _fetch(self, url: str) -> list[dict[str, Any]]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(2),
                    wait=wait_random_exponential(multiplier=0.2, max=self.retry_wait_max),
                    retry=retry_if_exception_type((httpx.TransportError, _Retryable)),
                    reraise=True,
                ):
                    with attempt:
                        raw = await self._get(client, url)
        except (httpx.HTTPError, _Retryable) as exc:
            logger.warning("jwks_url fetch failed (%s)", type(exc).__name__)
            raise JwksUnavailable("fetch failed") from exc
        try:
            doc = orjson.loads(raw)
            keys = doc["keys"]
            if not isinstance(keys, list) or not 0 < len(keys) <= 16:
                raise ValueError("keys")
            return [check_public_jwk(k) for k in keys]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            logger.warning("jwks_url answered an unusable key set")
            raise JwksUnavailable("unusable key set") from exc

    async def _get(self, client: httpx.AsyncClient, url: str) -> bytes:
        async with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code >= 500:
                raise _Retryable(str(response.status_code))
            if response.status_code != 200:
                raise JwksUnavailable(f"status {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise JwksUnavailable("key set too large")
                chunks.append(chunk)
            return b"".join(chunks)


def _usable(jwk: Mapping[str, Any], alg: str, kid: str | None) -> bool:
    if kid is not None and jwk.get("kid") != kid:
        return False
    if jwk.get("alg", alg) != alg or jwk.get("use", "sig") != "sig":
        return False
    if alg == "ES384":
        return jwk.get("kty") == "EC" and jwk.get("crv") == "P-384"
    return jwk.get("kty") == "RSA"


# -- the token service ---------------------------------------------------------------------------


KEY_RECHECK_SECONDS = 5.0


def load_token_signing_key(keys_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The newest token key, which signs."""
    key = TOKEN_KEYS.load_private(keys_dir)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def token_public_jwk(public: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """A token verification key as a JWK, ``kid`` its RFC 7638 thumbprint (the ``kid`` the
    tokens it signed carry: the same as ``partners.public_jwk`` of its private half)."""
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    assert isinstance(jwk, dict)
    return {**jwk, "kid": jwk_thumbprint(jwk), "use": "sig", "alg": ACCESS_TOKEN_ALGORITHM}


def load_token_verification_keys(keys_dir: Path) -> dict[str, ec.EllipticCurvePublicKey]:
    """Every token public key by ``kid``: the public list, newest first (the signing key's own
    public half when there is no list file)."""
    out: dict[str, ec.EllipticCurvePublicKey] = {}
    for key in TOKEN_KEYS.public_keys(keys_dir):
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            raise KeyMaterialError(f"{TOKEN_KEYS.public_file} holds a key that is not EC P-384")
        out[token_public_jwk(key)["kid"]] = key
    return out


def _segment(token: str, index: int) -> Any:
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    piece = parts[index]
    return orjson.loads(base64.urlsafe_b64decode(piece + "=" * (-len(piece) % 4)))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def purpose_code(value: Any) -> str | None:
    """``TREAT``, ``urn:oid:2.16.840.1.113883.5.8#TREAT`` or the v3-PurposeOfUse URI form."""
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        return None
    for system in PURPOSE_SYSTEMS:
        if value.startswith(system):
            value = value[len(system) :]
            break
    else:
        if "#" in value or ":" in value or "/" in value:
            return None
    return value if value.isalnum() and value.isupper() else None


@dataclass(slots=True)
class _Verified:
    partner_id: str
    scope: str
    purposes: tuple[str, ...]
    exp: float
    directory: PartnerDirectory | None = None
    requester: Requester | None = None


@dataclass
class TokenService:
    """Issues access tokens for client assertions and verifies them on ``/fhir``."""

    settings: Settings
    directory: PartnerDirectory  # swap for a new one to change partners (see docs/auth.md)
    clock: Clock
    replay: ReplayGuard
    signing_key: ec.EllipticCurvePrivateKey
    fetcher: JwksFetcher = field(default_factory=JwksFetcher)
    # Public keys that verify access tokens, by kid (the signing key's own is always one).
    verification_keys: dict[str, ec.EllipticCurvePublicKey] = field(default_factory=dict)
    # Verified access tokens (signature and claims checked once), with the requester they
    # stood for under the directory of the time; a new directory recomputes it.
    _verified: dict[str, _Verified] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._kid = public_jwk(self.signing_key)["kid"]
        self.verification_keys = {
            **self.verification_keys,
            self._kid: self.signing_key.public_key(),
        }
        self._keys_read = time.monotonic()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        directory: PartnerDirectory,
        clock: Clock,
        replay: ReplayGuard,
        fetcher: JwksFetcher | None = None,
    ) -> TokenService:
        return cls(
            settings=settings,
            directory=directory,
            clock=clock,
            replay=replay,
            signing_key=load_token_signing_key(settings.keys_dir),
            fetcher=fetcher or JwksFetcher(),
            verification_keys=load_token_verification_keys(settings.keys_dir),
        )

    @property
    def token_endpoint(self) -> str:
        return f"{self.settings.base_url}/auth/token"

    @property
    def audience(self) -> str:
        return self.settings.fhir_base

    # -- issuing ---------------------------------------------------------------------------------

    async def exchange(self, form: Mapping[str, str]) -> dict[str, Any]:
        """The token response for a token request's form fields, or ``OAuthError``."""
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
        assertion_type = form.get("client_assertion_type")
        assertion = form.get("client_assertion")
        if not assertion_type or not assertion:
            raise OAuthError(
                "invalid_request", "client_assertion_type and client_assertion are required"
            )
        if assertion_type != ASSERTION_TYPE:
            raise client_refused("assertion_type")
        if len(assertion) > MAX_ASSERTION_CHARS:
            raise OAuthError("invalid_request", "client_assertion is too long")
        partner, claims = await self._authenticate_client(assertion)
        if "client_id" in form and form["client_id"] != partner.id:
            raise client_refused("client_id_mismatch")
        await self._first_use(partner.id, claims)
        purposes = self._purposes(partner, claims)
        granted = ScopeGrant.parse(partner.scopes).intersect(parse_scopes(form.get("scope", "")))
        if granted.empty:
            raise OAuthError(
                "invalid_scope", "none of the requested scopes can be granted to this client"
            )
        scope = str(granted)
        now = int(self.clock.now().timestamp())
        access_claims = {
            "iss": self.settings.base_url,
            "aud": self.audience,
            "sub": partner.id,
            "client_id": partner.id,
            "iat": now,
            "exp": now + ACCESS_TOKEN_SECONDS,
            "jti": uuid.uuid4().hex,
            "scope": scope,
            "purpose_of_use": list(purposes),
            "kind": partner.kind,
            "organization": partner.organization,
        }
        token = jwt.encode(
            access_claims,
            self.signing_key,
            algorithm=ACCESS_TOKEN_ALGORITHM,
            headers={"kid": self._kid, "typ": "at+jwt"},
        )
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_SECONDS,
            "scope": scope,
        }

    async def _authenticate_client(self, assertion: str) -> tuple[Partner, dict[str, Any]]:
        try:
            header = _segment(assertion, 0)
        except (ValueError, binascii.Error, orjson.JSONDecodeError) as exc:
            raise client_refused("malformed") from exc
        if not isinstance(header, dict):
            raise client_refused("malformed")
        alg = header.get("alg")
        # The algorithm is checked before any key is looked at: no "none", no HMAC with a
        # public key as the secret, nothing but what SMART Backend Services names.
        if alg not in ASSERTION_ALGORITHMS:
            raise client_refused("algorithm")
        if "crit" in header or "b64" in header:
            raise client_refused("header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise client_refused("malformed")
        try:
            unverified = _segment(assertion, 1)
        except (ValueError, binascii.Error, orjson.JSONDecodeError) as exc:
            raise client_refused("malformed") from exc
        issuer = unverified.get("iss") if isinstance(unverified, dict) else None
        partner = self.directory.by_client_id(issuer) if isinstance(issuer, str) else None
        if partner is None:
            raise client_refused("unknown_client")
        payload = await self._verify_signature(partner, assertion, alg, kid)
        try:
            claims = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise client_refused("malformed") from exc
        if not isinstance(claims, dict):
            raise client_refused("malformed")
        self._check_assertion_claims(partner, claims)
        return partner, claims

    async def _candidate_keys(
        self, partner: Partner, alg: str, kid: str | None
    ) -> list[dict[str, Any]]:
        if partner.jwks_url is None:
            return [k for k in partner.inline_keys if _usable(k, alg, kid)]
        try:
            keys = [k for k in await self.fetcher.keys(partner.jwks_url) if _usable(k, alg, kid)]
            if not keys and kid is not None:  # perhaps a key the partner has just added
                fetched = await self.fetcher.keys(partner.jwks_url, refresh=True)
                keys = [k for k in fetched if _usable(k, alg, kid)]
        except JwksUnavailable as exc:
            raise client_refused("jwks_unavailable") from exc
        return keys

    async def _verify_signature(
        self, partner: Partner, assertion: str, alg: str, kid: str | None
    ) -> bytes:
        keys = await self._candidate_keys(partner, alg, kid)
        if not keys:
            raise client_refused("no_key")
        for jwk in keys:
            try:
                key = jwt.PyJWK(jwk, algorithm=alg).key
                payload = jwt.PyJWS().decode(assertion, key=key, algorithms=[alg])
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
            assert isinstance(payload, bytes)
            return payload
        raise client_refused("signature")

    def _check_assertion_claims(self, partner: Partner, claims: Mapping[str, Any]) -> None:
        now = self.clock.now().timestamp()
        if claims.get("iss") != partner.id or claims.get("sub") != partner.id:
            raise client_refused("iss_sub")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.token_endpoint not in audiences:
            raise client_refused("audience")
        exp = _number(claims.get("exp"))
        if exp is None:
            raise client_refused("exp_missing")
        if exp <= now - SKEW_SECONDS:
            raise client_refused("expired")
        if exp > now + MAX_ASSERTION_SECONDS + SKEW_SECONDS:
            raise client_refused("exp_too_far")
        for name in ("nbf", "iat"):
            if name in claims:
                value = _number(claims[name])
                if value is None or value > now + SKEW_SECONDS:
                    raise client_refused(f"{name}_in_future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
            raise client_refused("jti")

    async def _first_use(self, client_id: str, claims: Mapping[str, Any]) -> None:
        exp = _number(claims["exp"])
        assert exp is not None
        expires_at = datetime.fromtimestamp(exp + SKEW_SECONDS, UTC)
        now = self.clock.now()
        args = (client_id, claims["jti"], expires_at, now)
        try:
            if self.replay.waits_on_network:
                first = await run_in_threadpool(self.replay.first_use, *args)
            else:
                first = self.replay.first_use(*args)
        except SQLAlchemyError as exc:
            logger.error("token_replay unavailable (%s)", type(exc).__name__)
            raise OAuthError(
                "temporarily_unavailable", "try again later", status=503, reason="replay_store"
            ) from exc
        if not first:
            raise client_refused("replayed_jti")

    def _purposes(self, partner: Partner, claims: Mapping[str, Any]) -> tuple[str, ...]:
        extensions = claims.get("extensions")
        b2b = extensions.get("hl7-b2b") if isinstance(extensions, dict) else None
        asked = b2b.get("purpose_of_use") if isinstance(b2b, dict) else None
        if asked is None:
            return (partner.default_purpose,)
        if isinstance(asked, str):
            asked = [asked]
        if not isinstance(asked, list) or not 0 < len(asked) <= 16:
            raise OAuthError(
                "invalid_grant", "purpose_of_use is not valid", reason="purpose_malformed"
            )
        codes: list[str] = []
        for value in asked:
            code = purpose_code(value)
            if code is None or code not in partner.purposes:
                raise OAuthError(
                    "invalid_grant",
                    "a requested purpose of use is not permitted for this client",
                    reason="purpose_refused",
                )
            if code not in codes:
                codes.append(code)
        return tuple(codes)

    # -- verifying -------------------------------------------------------------------------------

    def requester_for(self, token: str) -> Requester:
        """The requester an access token stands for, or ``Unauthorized``. The partner must still
        be in the directory, and gets no more than it is allowed *now*."""
        now = self.clock.now().timestamp()
        verified = self._verified.get(token)
        if verified is None:
            verified = self._verify_access_token(token, now)
            if len(self._verified) >= 10_000:
                self._verified.clear()
            self._verified[token] = verified
        if now >= verified.exp + SKEW_SECONDS:
            self._verified.pop(token, None)
            raise _invalid_token()
        directory = self.directory
        if verified.directory is directory and verified.requester is not None:
            return verified.requester
        partner = directory.by_client_id(verified.partner_id)
        if partner is None:
            raise _invalid_token()
        granted = ScopeGrant.parse(partner.scopes).intersect(parse_scopes(verified.scope))
        allowed_purposes = tuple(p for p in verified.purposes if p in partner.purposes)
        if granted.empty or not allowed_purposes:
            raise _invalid_token()
        requester = Requester(
            partner_id=partner.id,
            kind=partner.kind,
            organization=partner.organization,
            scopes=tuple(granted.scopes()),
            purpose_of_use=allowed_purposes,
        )
        verified.directory, verified.requester = directory, requester
        return requester

    def jwks(self) -> dict[str, Any]:
        """The key set that verifies this gateway's access tokens (public keys only)."""
        return {"keys": [token_public_jwk(k) for k in self.verification_keys.values()]}

    def _verification_key(self, kid: Any) -> ec.EllipticCurvePublicKey | None:
        if not isinstance(kid, str):
            return None
        key = self.verification_keys.get(kid)
        if key is None and time.monotonic() - self._keys_read >= KEY_RECHECK_SECONDS:
            self._keys_read = time.monotonic()
            try:
                fresh = load_token_verification_keys(self.settings.keys_dir)
            except (KeyMaterialError, OSError):
                return None
            self.verification_keys = {**fresh, **self.verification_keys}  # never drops a key
            key = self.verification_keys.get(kid)
        return key

    def _verify_access_token(self, token: str, now: float) -> _Verified:
        try:
            header = _segment(token, 0)
            key = self._verification_key(header.get("kid") if isinstance(header, dict) else None)
            if key is None:
                raise _invalid_token()
            payload = jwt.PyJWS().decode(token, key=key, algorithms=[ACCESS_TOKEN_ALGORITHM])
            claims = orjson.loads(payload)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _invalid_token() from exc
        if not isinstance(claims, dict):
            raise _invalid_token()
        exp = _number(claims.get("exp"))
        iat = _number(claims.get("iat"))
        sub = claims.get("sub")
        scope = claims.get("scope")
        purposes = claims.get("purpose_of_use")
        if (
            claims.get("iss") != self.settings.base_url
            or claims.get("aud") != self.audience
            or exp is None
            or iat is None
            or iat > now + SKEW_SECONDS
            or not isinstance(sub, str)
            or not isinstance(scope, str)
            or not isinstance(purposes, list)
            or not all(isinstance(p, str) for p in purposes)
        ):
            raise _invalid_token()
        return _Verified(sub, scope, tuple(purposes), exp)

    async def authenticate(self, request: Request) -> Requester:
        """The ``Authenticator`` for ``/fhir`` (see ``deps.Authenticator``)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            raise _invalid_token("authentication required")
        return self.requester_for(token)

    def smart_configuration(self) -> dict[str, Any]:
        return smart_configuration(self.settings)


def _invalid_token(message: str = "the access token is not valid") -> Unauthorized:
    return Unauthorized(message, headers=dict(BEARER_CHALLENGE))


def smart_configuration(settings: Settings) -> dict[str, Any]:
    return {
        "issuer": settings.base_url,
        "token_endpoint": f"{settings.base_url}/auth/token",
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": supported_scopes(),
        "capabilities": ["client-confidential-asymmetric"],
    }


# -- routes --------------------------------------------------------------------------------------


def _oauth_response(error: OAuthError) -> Response:
    body = {"error": error.error, "error_description": error.description}
    return Response(
        orjson.dumps(body),
        status_code=error.status,
        headers=NO_STORE,
        media_type="application/json",
    )


async def _read_form(request: Request) -> dict[str, str]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "send application/x-www-form-urlencoded")
    declared = request.headers.get("content-length", "")
    too_large = OAuthError("invalid_request", "the request body is too large", status=413)
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise too_large
        chunks.append(chunk)
    try:
        pairs = parse_qsl(
            b"".join(chunks).decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            max_num_fields=16,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", "the form body is malformed") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", "a parameter is repeated")
        form[name] = value
    return form


def auth_routes(tokens: TokenService | None, settings: Settings) -> list[BaseRoute]:
    """``/.well-known/smart-configuration`` (at the FHIR base and the root) and ``/auth/token``.
    Without a token service (no partners configured) the token endpoint refuses every client."""

    async def configuration(_request: Request) -> Response:
        return Response(orjson.dumps(smart_configuration(settings)), media_type="application/json")

    async def token(request: Request) -> Response:
        started = time.perf_counter()
        address = request.client.host if request.client else None
        try:
            form = await _read_form(request)
            if tokens is None:
                raise client_refused("no_partners")
            answer = await tokens.exchange(form)
        except OAuthError as error:
            logger.info(
                "token request refused: %s (%s)",
                error.error,
                error.reason,
                extra={"duration_ms": round((time.perf_counter() - started) * 1000, 1)},
            )
            # A refused token request has no partner yet: counted per source and reason, and
            # folded into the log as one event a minute (never dropped, never unbounded).
            audit = request.app.state.gateway.audit
            try:
                await run_in_threadpool(
                    audit.note_unauthenticated, address, f"token:{error.reason}"
                )
            except ServiceUnavailable:
                return _oauth_response(UNAVAILABLE)
            return _oauth_response(error)
        assert tokens is not None
        holder = tokens.requester_for(answer["access_token"])
        issued = Activity("operation", None, subtypes=("token-issued",))
        actor = Actor(
            holder.partner_id, holder.organization, holder.purpose_of_use, address=address
        )
        try:
            await append_audit(request.app.state.gateway, [issued], actor)
        except ServiceUnavailable:
            return _oauth_response(UNAVAILABLE)  # no audit, no token
        return Response(orjson.dumps(answer), headers=NO_STORE, media_type="application/json")

    return [
        # Where SMART clients look (the FHIR base), and at the server root.
        FhirRoute(
            "/fhir/.well-known/smart-configuration",
            configuration,
            methods=["GET"],
            interaction=None,
        ),
        FhirRoute(
            "/.well-known/smart-configuration", configuration, methods=["GET"], interaction=None
        ),
        FhirRoute("/auth/token", token, methods=["POST"], interaction=None),
    ]
