"""A synthetic hospital FHIR R4 server: made-up Patients, ServiceRequests (referrals to social
work and shelter, some for trafficking or abuse) and CarePlans, served over real HTTP on
loopback with a real SMART Backend Services token endpoint, for the demo and the integration
tests of ``adapters/fhir.py`` and ``adapters/smart.py``.

The server answers ``GET /.well-known/smart-configuration``, ``POST /auth/token`` (the client
assertion verified with PyJWT against the registered public JWK set: signature, ``iss`` = ``sub``
= the client id, ``aud`` = its token URL, ``exp`` at most five minutes after ``iat``, a ``jti``
never seen before: else 400 ``invalid_client``) and ``GET /fhir/{Patient|ServiceRequest|CarePlan}``
with ``_count``, ``_lastUpdated=ge<instant>`` and ``_page`` (an opaque offset token in its next
links); every search needs a bearer token it issued and that has not expired (else 401). It fails
on request: 503 or 429 on the Nth request, all tokens forgotten at the Nth request, a next link to
another host.

Every person is made up (``gateway.synth.names``); nothing here imports the rest of the gateway.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import jwt

from gateway.synth._serve import serving
from gateway.synth.names import person

TODAY: Final = date(2026, 12, 1)
SEARCH_TYPES: Final = ("Patient", "ServiceRequest", "CarePlan")
FHIR_PATH: Final = "/fhir"
TOKEN_PATH: Final = "/auth/token"  # noqa: S105 (a path, not a secret)
ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MRN_SYSTEM: Final = "urn:oid:2.16.840.1.113883.3.7418.1"
REFERRAL_SYSTEM: Final = "urn:oid:2.16.840.1.113883.3.7418.2"
ICD10CM: Final = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED: Final = "http://snomed.info/sct"
REASONS: Final = (
    ("Z91.42", "Personal history of forced labor or sexual exploitation"),
    ("Z91.410", "Personal history of adult physical and sexual abuse"),
    ("Z91.411", "Personal history of adult psychological abuse"),
    ("Z91.419", "Personal history of unspecified adult abuse"),
)
REFERRALS: Final = (
    {"coding": [{"system": SNOMED, "code": "306362008", "display": "Referral to social worker"}]},
    {"text": "Referral to emergency shelter"},
    {"text": "Referral to domestic violence advocate"},
)
CITIES: Final = (("Washington", "DC", "200"), ("Hyattsville", "MD", "207"))
GENDERS: Final = {"F": "female", "M": "male", "U": "unknown"}


def _stamp(rng: random.Random) -> str:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 330 * 86_400))
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{rng.randint(0, 999):03d}Z"


def _patient(rng: random.Random, index: int) -> dict[str, Any]:
    someone = person(rng, today=TODAY)
    city, state, zip_prefix = rng.choice(CITIES)
    doc: dict[str, Any] = {
        "resourceType": "Patient",
        "id": f"pat-{index:05d}",
        "meta": {"versionId": "1", "lastUpdated": _stamp(rng)},
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{someone.given} {someone.family}'
            "</div>",
        },
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
                "system": MRN_SYSTEM,
                "value": f"MRN{700000 + index}",
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": someone.family, "given": [someone.given]}],
        "telecom": [{"system": "phone", "value": someone.phone, "use": "mobile"}],
        "gender": GENDERS[someone.sex],
        "birthDate": someone.birth_date.isoformat(),
        "address": [
            {
                "use": "home",
                "line": [f"{rng.randint(100, 4999)} Maple St"],
                "city": city,
                "state": state,
                "postalCode": f"{zip_prefix}{rng.randint(0, 99):02d}",
            }
        ],
        "communication": [
            {
                "language": {"coding": [{"system": "urn:ietf:bcp:47", "code": someone.language}]},
                "preferred": True,
            }
        ],
        "generalPractitioner": [{"reference": f"Practitioner/dr-{rng.randint(1, 9)}"}],
    }
    if rng.random() < 0.3:
        doc["extension"] = [
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                "valueCode": someone.sex if someone.sex in ("F", "M") else "UNK",
            }
        ]
    if rng.random() < 0.2:
        doc["meta"]["security"] = [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
        ]
    return doc


def _service_request(rng: random.Random, index: int, patient: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": f"sr-{index:05d}",
        "meta": {"versionId": "1", "lastUpdated": _stamp(rng)},
        "identifier": [{"system": REFERRAL_SYSTEM, "value": f"REF-{90000 + index}"}],
        "status": rng.choice(("active", "active", "completed", "draft")),
        "intent": "order",
        "category": [
            {
                "coding": [
                    {"system": SNOMED, "code": "410606002", "display": "Social service procedure"}
                ]
            }
        ],
        "priority": rng.choice(("routine", "urgent")),
        "code": json.loads(json.dumps(rng.choice(REFERRALS))),
        "subject": {"reference": f"Patient/{patient}"},
        "authoredOn": _stamp(rng),
        "requester": {"reference": f"Practitioner/dr-{rng.randint(1, 9)}"},
        "performer": [{"reference": "Organization/shelter-1", "display": "Partner shelter"}],
        "note": [{"text": "Warm handoff requested."}],
    }
    if rng.random() < 0.6:
        code, display = rng.choice(REASONS)
        doc["reasonCode"] = [{"coding": [{"system": ICD10CM, "code": code, "display": display}]}]
    return doc


def _care_plan(rng: random.Random, index: int, patient: str, referral: str) -> dict[str, Any]:
    start = TODAY - timedelta(days=rng.randint(10, 300))
    return {
        "resourceType": "CarePlan",
        "id": f"cp-{index:05d}",
        "meta": {"versionId": "1", "lastUpdated": _stamp(rng)},
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">Plan</div>',
        },
        "identifier": [{"system": REFERRAL_SYSTEM, "value": f"CP-{90000 + index}"}],
        "status": rng.choice(("active", "completed")),
        "intent": "plan",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                        "code": "assess-plan",
                    }
                ]
            }
        ],
        "title": "Safety and social care plan",
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": start.isoformat()},
        "author": {"reference": f"Practitioner/dr-{rng.randint(1, 9)}"},
        "activity": [
            {"reference": {"reference": f"ServiceRequest/{referral}"}},
            {
                "detail": {
                    "code": {"text": "Safety planning"},
                    "status": rng.choice(("scheduled", "in-progress", "completed")),
                    "description": "Safety planning with the social worker.",
                }
            },
        ],
    }


def hospital_resources(n: int, *, seed: int) -> list[dict[str, Any]]:
    """``n`` made-up resources: per patient a Patient, a ServiceRequest for her and a CarePlan
    referencing both (``Patient/<id>``, ``ServiceRequest/<id>``), cut at ``n``. Strict R4; the
    same list for the same seed."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    index = 0
    while len(out) < n:
        index += 1
        patient = _patient(rng, index)
        referral = _service_request(rng, index, patient["id"])
        plan = _care_plan(rng, index, patient["id"], referral["id"])
        out.extend((patient, referral, plan))
    return out[:n]


@dataclass(frozen=True, slots=True)
class Failures:
    """What the fake hospital gets wrong on purpose, by request number (1-based, counting every
    request it receives): 503, 429 (``Retry-After: 0``), or forgetting every token it issued
    (the next search with one gets 401)."""

    unavailable_on: frozenset[int] = frozenset()
    rate_limited_on: frozenset[int] = frozenset()
    expire_tokens_on: frozenset[int] = frozenset()


@dataclass
class _Hospital:
    resources: Sequence[Mapping[str, Any]]
    client_id: str
    keys: Mapping[str, jwt.PyJWK]
    page_size: int
    token_ttl: int
    fail: Failures
    next_link_host: str | None
    clock: Callable[[], float]
    log: list[str] | None
    base: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    tokens: dict[str, float] = field(default_factory=dict)
    jtis: set[str] = field(default_factory=set)

    def count(self, line: str) -> int:
        with self.lock:
            self.requests += 1
            if self.log is not None:
                self.log.append(line)
            if self.requests in self.fail.expire_tokens_on:
                self.tokens.clear()
            return self.requests

    def issue(self) -> str:
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = self.clock() + self.token_ttl
        return token

    def authorised(self, header: str | None) -> bool:
        if header is None:
            return False
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        with self.lock:
            until = self.tokens.get(token)
            return until is not None and self.clock() < until

    def verify(self, form: Mapping[str, list[str]]) -> str | None:
        """The OAuth error for a token request, or ``None`` when the client is authenticated."""

        def one(name: str) -> str | None:
            values = form.get(name, [])
            return values[0] if len(values) == 1 else None

        if one("grant_type") != "client_credentials":
            return "unsupported_grant_type"
        if one("client_assertion_type") != ASSERTION_TYPE or not one("scope"):
            return "invalid_request"
        assertion = one("client_assertion")
        if assertion is None:
            return "invalid_request"
        try:
            header = jwt.get_unverified_header(assertion)
            key = self.keys.get(str(header.get("kid")))
            if key is None or header.get("alg") not in ("ES384", "RS384"):
                return "invalid_client"
            if header.get("alg") != key.algorithm_name:
                return "invalid_client"
            claims = jwt.decode(
                assertion,
                key.key,
                algorithms=[key.algorithm_name],
                audience=f"{self.base}{TOKEN_PATH}",
                issuer=self.client_id,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
                leeway=0,
            )
        except jwt.PyJWTError:
            return "invalid_client"
        if claims.get("sub") != self.client_id:
            return "invalid_client"
        exp = claims["exp"]
        if not isinstance(exp, int | float) or exp > self.clock() + 300 + 5:
            return "invalid_client"
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            return "invalid_client"
        with self.lock:
            if jti in self.jtis:
                return "invalid_client"
            self.jtis.add(jti)
        return None


def _page_token(offset: int, count: int, since: str) -> str:
    raw = json.dumps({"o": offset, "c": count, "s": since}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_page_token(text: str) -> tuple[int, int, str] | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return int(data["o"]), int(data["c"]), str(data["s"])
    except (ValueError, KeyError, TypeError):
        return None


def _instant(text: str) -> datetime | None:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else None


def _outcome(code: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code}],
    }


def _handler(site: _Hospital) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeHospitalFHIR/4.0.1"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: request lines carry search values."""

        def _json(self, status: int, value: Any, headers: Mapping[str, str] | None = None) -> None:
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            for name, text in (headers or {}).items():
                self.send_header(name, text)
            self.end_headers()
            self.wfile.write(body)

        def _failed(self, number: int) -> bool:
            if number in site.fail.unavailable_on:
                self._json(503, _outcome("transient"))
                return True
            if number in site.fail.rate_limited_on:
                self._json(429, _outcome("throttled"), {"Retry-After": "0"})
                return True
            return False

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            number = site.count(f"POST {url.path}")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 65_536)).decode("ascii", "replace")
            if self._failed(number):
                return
            if url.path != TOKEN_PATH:
                self._json(404, _outcome("not-found"))
                return
            error = site.verify(parse_qs(body, keep_blank_values=True))
            if error is not None:
                # A real server's description may echo the request; the client must not repeat it.
                self._json(400, {"error": error, "error_description": f"rejected: {body[:64]}"})
                return
            scope = parse_qs(body).get("scope", [""])[0]
            self._json(
                200,
                {
                    "access_token": site.issue(),
                    "token_type": "bearer",
                    "expires_in": site.token_ttl,
                    "scope": scope,
                },
                {"Cache-Control": "no-store"},
            )

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            number = site.count(f"GET {url.path}")
            if self._failed(number):
                return
            if url.path == f"{FHIR_PATH}/.well-known/smart-configuration":
                self._json(
                    200,
                    {
                        "token_endpoint": f"{site.base}{TOKEN_PATH}",
                        "grant_types_supported": ["client_credentials"],
                        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                        "token_endpoint_auth_signing_alg_values_supported": ["ES384", "RS384"],
                        "scopes_supported": ["system/*.rs"],
                        "capabilities": ["client-confidential-asymmetric"],
                    },
                )
                return
            kind = url.path.removeprefix(f"{FHIR_PATH}/")
            if not url.path.startswith(f"{FHIR_PATH}/") or kind not in SEARCH_TYPES:
                self._json(404, _outcome("not-found"))
                return
            if not site.authorised(self.headers.get("Authorization")):
                self._json(
                    401, _outcome("login"), {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                )
                return
            self._search(kind, parse_qs(url.query))

        def _search(self, kind: str, query: dict[str, list[str]]) -> None:
            if set(query) - {"_count", "_lastUpdated", "_page"}:
                self._json(400, _outcome("not-supported"))
                return
            offset, since = 0, ""
            try:
                count = min(1000, max(1, int(query.get("_count", [str(site.page_size)])[0])))
            except ValueError:
                self._json(400, _outcome("invalid"))
                return
            if "_page" in query:
                token = _read_page_token(query["_page"][0])
                if token is None:
                    self._json(400, _outcome("invalid"))
                    return
                offset, count, since = token
            elif "_lastUpdated" in query:
                since = query["_lastUpdated"][0]
            floor = None
            if since:
                floor = _instant(since[2:]) if since.startswith("ge") else None
                if floor is None:
                    self._json(400, _outcome("invalid"))
                    return
            chosen = [
                r
                for r in list(site.resources)
                if r.get("resourceType") == kind
                and (floor is None or (_instant(str(r["meta"]["lastUpdated"])) or floor) >= floor)
            ]
            page = chosen[offset : offset + count]
            links = [{"relation": "self", "url": f"{site.base}{FHIR_PATH}/{kind}"}]
            if offset + count < len(chosen):
                base = site.base
                if site.next_link_host is not None:
                    base = f"http://{site.next_link_host}"
                links.append(
                    {
                        "relation": "next",
                        "url": f"{base}{FHIR_PATH}/{kind}?_page="
                        + _page_token(offset + count, count, since),
                    }
                )
            bundle = {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(chosen),
                "link": links,
                "entry": [
                    {
                        "fullUrl": f"{site.base}{FHIR_PATH}/{kind}/{r['id']}",
                        "resource": r,
                        "search": {"mode": "match"},
                    }
                    for r in page
                ],
            }
            self._json(200, bundle)

    return Handler


@contextmanager
def serve_fake_fhir(
    resources: Sequence[Mapping[str, Any]],
    *,
    client_id: str,
    public_jwks: Mapping[str, Any],
    host: str = "127.0.0.1",
    port: int = 0,
    page_size: int = 50,
    token_ttl: int = 300,
    fail: Failures | None = None,
    next_link_host: str | None = None,
    clock: Callable[[], float] = time.time,
    log: list[str] | None = None,
) -> Iterator[str]:
    """Serve ``resources`` as a hospital's FHIR server; yields the FHIR base URL
    (``http://host:port/fhir``). ``public_jwks`` is the client's registered key set
    (``{"keys": [jwk, ...]}``, each with a ``kid``); ``next_link_host`` (``host:port``) makes
    every next link point there instead; ``log`` receives ``METHOD path`` of every request."""
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in public_jwks.get("keys", []):
        if not isinstance(jwk, Mapping) or not isinstance(jwk.get("kid"), str):
            raise ValueError("every registered key needs a kid")
        keys[jwk["kid"]] = jwt.PyJWK(dict(jwk))
    if not keys:
        raise ValueError("register at least one public key")
    if page_size < 1 or token_ttl < 1:
        raise ValueError("page_size and token_ttl must be positive")
    site = _Hospital(
        resources=resources,
        client_id=client_id,
        keys=keys,
        page_size=page_size,
        token_ttl=token_ttl,
        fail=fail or Failures(),
        next_link_host=next_link_host,
        clock=clock,
        log=log,
    )
    with serving(_handler(site), host=host, port=port, name="fake-fhir") as base:
        site.base = base
        yield f"{base}{FHIR_PATH}"


__all__ = [
    "FHIR_PATH",
    "SEARCH_TYPES",
    "TOKEN_PATH",
    "Failures",
    "hospital_resources",
    "serve_fake_fhir",
]
