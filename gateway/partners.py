"""The partner directory: who may call the gateway, with which keys, for what.

The partners file (``GATEWAY_PARTNERS_FILE``, YAML, shape fixed by DESIGN.md section 3) is read
once at start-up. A bad file stops start-up with one line per problem naming the file, the line
and the field (``partners.yaml:14: partners[2].kind: must be one of …``); values are never echoed,
so key material cannot leak into an error.

Demo keys: ``examples/partners.yaml`` carries the marker ``jwks: demo-generated-keys`` in place
of each partner's public keys, because no private key may be committed. ``load_partners``
refuses the marker; only the demo (``Settings.demo``) turns it into real keys, through
``write_demo_partners`` (see docs/auth.md).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import jwt
import orjson
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.access.scopes import parse_scope
from gateway.errors import Conflict, Gone, NotFound
from gateway.settings import Settings
from gateway.store.port import ResourceStore
from gateway.write.admit import admit, check

logger = logging.getLogger("gateway.partners")

DEMO_KEYS_PLACEHOLDER = "demo-generated-keys"
DEMO_KEYS_SUBDIR = "demo-partners"
DEMO_PARTNERS_FILE = "partners.demo.yaml"
MAX_FILE_BYTES = 1024 * 1024
MAX_KEYS_PER_PARTNER = 16
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
PARTNER_KINDS = ("shelter", "legal-aid", "clinic", "hospital", "compliance", "admin")

# v3-PurposeOfUse (http://terminology.hl7.org/CodeSystem/v3-PurposeOfUse), the codes a partner
# may be allowed. A code outside this list is a typo, not a purpose.
_PURPOSE_CODES = """
    TREAT ETREAT BTG ERTREAT CLINTRL POPHLTH COC CAREMGT HPAYMT CLMATTCH COVAUTH COVERAGE
    ELIGDTRM ELIGVER ENROLLM MILDCRG REMITADV HOPERAT HMARKT DONAT FRAUD GOV HACCRED HCOMPL HDECD
    HDIRECT HDM HLEGAL HOUTCOMS HPRGRP HQUALIMP HSYSADMIN LABELING METAMGT MEMADMIN MILCDM
    PATADMIN PATSFTY PERFMSR RECORDMGT SYSDEV HTEST TRAIN HRESCH BIORCH CLINTRCH CLINTRCHNPC
    CLINTRCHPC PRECLINTRCH DSRCH POARCH TRANSRCH PATRQT FAMRQT PWATRNY SUPNWK PUBHLTH DISASTER
    THREAT"""
PURPOSES_OF_USE = frozenset(_PURPOSE_CODES.split())

PartnerId = Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")]
Kind = Literal["shelter", "legal-aid", "clinic", "hospital", "compliance", "admin"]


class PartnersFileError(Exception):
    """The partners file cannot be used; ``problems`` has one ``file:line: field: why`` each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def check_public_jwk(jwk: Any) -> dict[str, Any]:
    """A public signing key usable with RS384 or ES384, as a JWK; never a private one."""
    if not isinstance(jwk, dict) or not all(isinstance(k, str) for k in jwk):
        raise ValueError("each key must be a JWK object")
    if PRIVATE_JWK_MEMBERS & set(jwk):
        raise ValueError("private key material is not allowed here; give the public key only")
    kty = jwk.get("kty")
    if kty not in ("EC", "RSA"):
        raise ValueError("kty must be EC (P-384, ES384) or RSA (RS384)")
    if kty == "EC" and jwk.get("crv") != "P-384":
        raise ValueError("an EC key must be on curve P-384 (ES384)")
    if "alg" in jwk and jwk["alg"] != ("ES384" if kty == "EC" else "RS384"):
        raise ValueError("alg must be ES384 for EC keys and RS384 for RSA keys")
    if "use" in jwk and jwk["use"] != "sig":
        raise ValueError("use must be sig")
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 255):
        raise ValueError("kid must be a string of 1 to 255 characters")
    try:
        key = jwt.PyJWK(jwk, algorithm="ES384" if kty == "EC" else "RS384").key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise ValueError("the key does not parse as a public JWK") from exc
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ValueError("an RSA key must have at least 2048 bits")
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("the key is not a public key")
    return dict(jwk)


class Jwks(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    keys: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_KEYS_PER_PARTNER)]

    @field_validator("keys")
    @classmethod
    def _public_signing_keys(cls, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        checked = []
        for index, jwk in enumerate(keys):
            try:
                checked.append(check_public_jwk(jwk))
            except ValueError as exc:
                raise ValueError(f"key {index}: {exc}") from None
        kids = [k["kid"] for k in checked if "kid" in k]
        if len(kids) != len(set(kids)):
            raise ValueError("kid values must be unique")
        return checked


def _check_url(value: str, *, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not carry credentials")
    return value


class Partner(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    id: PartnerId
    name: Annotated[str, Field(min_length=1, max_length=200)]
    kind: Kind
    organization: Annotated[str, Field(pattern=r"^Organization/[A-Za-z0-9\-.]{1,64}$")]
    jwks: Jwks | Literal["demo-generated-keys"] | None = None  # see _jwks
    jwks_url: str | None = None
    scopes: Annotated[list[str], Field(min_length=1, max_length=64)]
    purposes: Annotated[list[str], Field(min_length=1, max_length=32)]
    default_purpose: str
    endpoint: str | None = None
    hl7_sending_facility: Annotated[str, Field(pattern=r"^[A-Za-z0-9 ._&-]{1,227}$")] | None = None
    # A shelter that is a VAWA victim service provider (28 CFR 94.115), whatever its HMIS
    # exports say: its exports are read as a VSP's (docs/hmis-csv.md).
    victim_service_provider: bool = False
    # Where this partner's HL7 v2 messages come from over MLLP (IP addresses or networks,
    # CIDR): MSH-4 is written by the sender, so it says whose a message is only when the
    # connection comes from the partner's own network. None: the listener accepts nothing
    # claiming to be this partner.
    hl7_peers: Annotated[list[str], Field(min_length=1, max_length=64)] | None = None

    @field_validator("jwks", mode="before")
    @classmethod
    def _jwks(cls, value: Any) -> Any:
        """One clear message instead of one per branch of the union."""
        if value is None or value == DEMO_KEYS_PLACEHOLDER:
            return value
        if not isinstance(value, dict):
            raise ValueError("must be a JWK set ({keys: [...]}) or the demo placeholder")
        try:
            return Jwks.model_validate(value)
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = _format_loc(tuple(first["loc"]))
            raise ValueError(f"{where}: {_message(first)}" if where else _message(first)) from None

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _check_url(value, what="jwks_url")
        parts = urlsplit(value)
        if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("jwks_url must be https (plain http only on loopback)")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, what="endpoint")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        for index, scope in enumerate(scopes):
            if parse_scope(scope) is None:
                raise ValueError(
                    f"scopes[{index}] is not a SMART system scope (system/Type.cruds, "
                    "system/*.rs, system/Type.read)"
                )
        return scopes

    @field_validator("purposes")
    @classmethod
    def _purposes(cls, purposes: list[str]) -> list[str]:
        for index, code in enumerate(purposes):
            if code not in PURPOSES_OF_USE:
                raise ValueError(f"purposes[{index}] is not a v3 PurposeOfUse code")
        if len(set(purposes)) != len(purposes):
            raise ValueError("purposes must not repeat")
        return purposes

    @field_validator("default_purpose")
    @classmethod
    def _default_purpose(cls, value: str, info: Any) -> str:
        purposes = info.data.get("purposes")
        if purposes is not None and value not in purposes:
            raise ValueError("must be one of this partner's purposes")
        return value

    @field_validator("hl7_peers")
    @classmethod
    def _hl7_peers(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for index, text in enumerate(value):
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"hl7_peers[{index}] is not an IP address or network") from None
        return value

    def sends_hl7_from(self, address: str) -> bool:
        """Whether an MLLP connection from ``address`` may speak for this partner."""
        if not self.hl7_peers:
            return False
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in ipaddress.ip_network(n, strict=False) for n in self.hl7_peers)

    @field_validator("victim_service_provider")
    @classmethod
    def _victim_service_provider(cls, value: bool, info: Any) -> bool:
        if value and info.data.get("kind") not in (None, "shelter"):
            raise ValueError("only a partner of kind shelter is a victim service provider")
        return value

    @property
    def organization_id(self) -> str:
        return self.organization.removeprefix("Organization/")

    @property
    def has_demo_placeholder(self) -> bool:
        return self.jwks == DEMO_KEYS_PLACEHOLDER

    @property
    def inline_keys(self) -> list[dict[str, Any]]:
        return list(self.jwks.keys) if isinstance(self.jwks, Jwks) else []


class PartnersDocument(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    partners: Annotated[list[Partner], Field(min_length=1, max_length=1000)]


class PartnerDirectory:
    """Partners by client id, by Organization reference and by HL7 v2 sending facility
    (immutable; a changed file means a new directory)."""

    __slots__ = ("_by_facility", "_by_id", "_by_org", "partners")

    def __init__(self, partners: Iterable[Partner]) -> None:
        self.partners = tuple(partners)
        self._by_id = {p.id: p for p in self.partners}
        self._by_org = {p.organization: p for p in self.partners}
        self._by_facility = {
            p.hl7_sending_facility: p for p in self.partners if p.hl7_sending_facility
        }

    def __iter__(self) -> Iterator[Partner]:
        return iter(self.partners)

    def __len__(self) -> int:
        return len(self.partners)

    def by_client_id(self, client_id: str) -> Partner | None:
        return self._by_id.get(client_id)

    def by_organization(self, reference: str) -> Partner | None:
        return self._by_org.get(reference)

    def by_hl7_facility(self, facility: str) -> Partner | None:
        return self._by_facility.get(facility)

    def without(self, client_id: str) -> PartnerDirectory:
        return PartnerDirectory(tuple(p for p in self.partners if p.id != client_id))


# -- loading, with line numbers --------------------------------------------------------------------


Loc = tuple[str | int, ...]


def _format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _node_at(root: yaml.Node, loc: Loc) -> yaml.Node:
    """The deepest node of ``loc`` that exists in the document (for a missing field: the mapping
    that should have held it)."""
    node = root
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            child = next(
                (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part),
                None,
            )
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if 0 <= part < len(node.value) else None
        if child is None:
            break
        node = child
    return node


def _check_structure(root: yaml.Node) -> list[tuple[yaml.Node, str]]:
    """Refuse aliases (a billion-laughs file, or one key silently shared) and duplicate keys (YAML
    keeps the last one; a partner file must not be ambiguous)."""
    problems: list[tuple[yaml.Node, str]] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            problems.append((node, "anchors and aliases are not allowed"))
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    problems.append((key, "mapping keys must be plain names"))
                    continue
                if key.value in keys:
                    problems.append((key, f"key {key.value!r} appears twice"))
                keys.add(key.value)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return problems


def _message(error: Mapping[str, Any]) -> str:
    kind = error.get("type")
    ctx = error.get("ctx") or {}
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', 'the allowed values')}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "value_error":
        return str(ctx.get("error", "is not valid"))
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern', 'the expected pattern')}"
    return str(error.get("msg", "is not valid"))


def _parse(path: Path, *, allow_demo_placeholder: bool) -> PartnersDocument:
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problem = f"{name}: cannot read the partners file ({exc.strerror})"
        raise PartnersFileError([problem]) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise PartnersFileError([f"{name}: the partners file is larger than {MAX_FILE_BYTES}"])
    try:
        loader = yaml.SafeLoader(raw.decode("utf-8"))
        try:
            root = loader.get_single_node()
            if root is None:
                raise PartnersFileError([f"{name}:1: the partners file is empty"])
            structural = _check_structure(root)
            if structural:
                raise PartnersFileError(
                    [f"{name}:{n.start_mark.line + 1}: {why}" for n, why in structural]
                )
            data = loader.construct_document(root)
        finally:
            loader.dispose()
    except UnicodeDecodeError as exc:
        raise PartnersFileError([f"{name}: the partners file is not UTF-8"]) from exc
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise PartnersFileError([f"{name}:{line}: not valid YAML ({exc.problem})"]) from exc
    except yaml.YAMLError as exc:
        raise PartnersFileError([f"{name}: not valid YAML"]) from exc

    problems: list[tuple[Loc, str]] = []
    try:
        document = PartnersDocument.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            problems.append((tuple(error["loc"]), _message(error)))
        document = None
    if document is not None:
        problems.extend(_cross_checks(document, allow_demo_placeholder=allow_demo_placeholder))
    if problems:
        lines = []
        for loc, why in problems:
            line = _node_at(root, loc).start_mark.line + 1
            lines.append(f"{name}:{line}: {_format_loc(loc) or '(document)'}: {why}")
        raise PartnersFileError(lines)
    assert document is not None
    return document


def _cross_checks(
    document: PartnersDocument, *, allow_demo_placeholder: bool
) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    firsts: dict[tuple[str, str], int] = {}
    for index, partner in enumerate(document.partners):
        for field in ("id", "organization", "hl7_sending_facility"):
            value = getattr(partner, field)
            if value is None:
                continue
            first = firsts.setdefault((field, value), index)
            if first != index:
                problems.append(
                    (("partners", index, field), f"repeats the value of partners[{first}]")
                )
        if (partner.jwks is None) == (partner.jwks_url is None):
            problems.append((("partners", index, "jwks"), "give exactly one of jwks or jwks_url"))
        if partner.has_demo_placeholder and not allow_demo_placeholder:
            problems.append(
                (
                    ("partners", index, "jwks"),
                    f"is the demo placeholder {DEMO_KEYS_PLACEHOLDER!r}; outside the demo give "
                    "the partner's public keys (jwks: {keys: [...]}) or jwks_url",
                )
            )
    return problems


def load_partners(path: Path) -> PartnerDirectory:
    """The partner directory from a partners file; ``PartnersFileError`` when it is not usable.
    The demo placeholder is refused here: only ``partners_for`` in demo mode replaces it."""
    document = _parse(path, allow_demo_placeholder=False)
    return PartnerDirectory(tuple(document.partners))


def partners_for(settings: Settings) -> PartnerDirectory:
    """The directory a gateway runs with. Outside demo mode the configured file as it is (a demo
    placeholder is a start-up error); in demo mode a copy of it with generated demo keys."""
    if not settings.demo:
        return load_partners(settings.partners_file)
    out = settings.keys_dir.parent / DEMO_PARTNERS_FILE
    return load_partners(write_demo_partners(settings.partners_file, settings.keys_dir, out))


def ensure_organizations(store: ResourceStore, directory: PartnerDirectory) -> list[str]:
    """Create each partner's Organization when it is absent; returns the references created."""
    created = []
    for partner in directory:
        try:
            store.read("Organization", partner.organization_id)
            continue
        except (NotFound, Gone):
            pass
        resource = {
            "resourceType": "Organization",
            "id": partner.organization_id,
            "active": True,
            "name": partner.name,
        }
        try:
            # The gateway's own record: no contributor (every partner sees directory entries).
            entry = admit(check(resource), contributor=None)
            store.update("Organization", partner.organization_id, entry, if_match=None)
        except Conflict:  # another worker created it at the same moment
            continue
        created.append(partner.organization)
    return created


# -- keys: JWKs, demo keys, client assertions -----------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256) of a public EC or RSA JWK."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = orjson.dumps({m: jwk[m] for m in members}, option=orjson.OPT_SORT_KEYS)
    return _b64url(hashlib.sha256(canonical).digest())


def public_jwk(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> dict[str, Any]:
    """The public half of a signing key as a JWK with ``kid`` (its thumbprint), ``use`` and
    ``alg`` set."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
        alg = "ES384"
    else:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        alg = "RS384"
    assert isinstance(jwk, dict)
    out = {k: v for k, v in jwk.items() if k not in PRIVATE_JWK_MEMBERS}
    out.update(kid=jwk_thumbprint(out), use="sig", alg=alg)
    return out


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{path.name} is not an EC or RSA private key")
    return key


def _write_private_pem(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def demo_key_path(keys_dir: Path, partner_id: str) -> Path:
    return keys_dir / DEMO_KEYS_SUBDIR / f"{partner_id}.pem"


def write_demo_partners(template: Path, keys_dir: Path, out: Path) -> Path:
    """The demo network with real keys: for each partner of ``template`` that carries the demo
    placeholder, an ES384 key pair in ``KEYS_DIR/demo-partners/<id>.pem`` (0600; kept across
    runs) and its public JWK inline in ``out``. Returns ``out``."""
    document = _parse(template, allow_demo_placeholder=True)
    key_dir = keys_dir / DEMO_KEYS_SUBDIR
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_dir.chmod(0o700)
    partners = []
    for partner in document.partners:
        entry = partner.model_dump(exclude_none=True)
        if partner.has_demo_placeholder:
            path = demo_key_path(keys_dir, partner.id)
            if not path.exists():
                _write_private_pem(path, ec.generate_private_key(ec.SECP384R1()))
            entry["jwks"] = {"keys": [public_jwk(load_private_key(path))]}
        partners.append(entry)
    header = (
        f"# Generated by the gateway demo from {template.name}: the demo network with the\n"
        f"# public keys of {key_dir}. Do not edit; it is rewritten on every demo run.\n"
    )
    body = yaml.safe_dump({"partners": partners}, sort_keys=False, allow_unicode=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(header + body, encoding="utf-8")
    tmp.replace(out)
    return out


def mint_client_assertion(
    client_id: str,
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    token_url: str,
    *,
    now: float | None = None,
    lifetime: int = 240,
    purposes: list[str] | None = None,
    kid: str | None = None,
    jti: str | None = None,
    claims: Mapping[str, Any] | None = None,
) -> str:
    """A SMART Backend Services client assertion (ES384 for EC keys, RS384 for RSA keys), for the
    demo and tests. ``purposes`` go into ``extensions.hl7-b2b.purpose_of_use``."""
    issued = int(time.time() if now is None else now)
    body: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": jti or uuid.uuid4().hex,
    }
    if purposes is not None:
        body["extensions"] = {"hl7-b2b": {"purpose_of_use": purposes}}
    body.update(claims or {})
    alg = "ES384" if isinstance(private_key, ec.EllipticCurvePrivateKey) else "RS384"
    headers = {"typ": "JWT", "kid": kid or public_jwk(private_key)["kid"]}
    return jwt.encode(body, private_key, algorithm=alg, headers=headers)


# -- onboarding: what `gateway partners add|check|list` needs (gateway/commands/partners.py) ------


def jwk_from_public_key(public: object) -> dict[str, Any]:
    """A partner's public signing key as the JWK the token endpoint verifies its assertions
    with: ``kid`` its RFC 7638 thumbprint, ``use`` sig, ``alg`` RS384 or ES384. Refuses what the
    loader would refuse (another curve, a short RSA key), saying why and never quoting the key."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        if not isinstance(public.curve, ec.SECP384R1):
            raise ValueError("an EC key must be on curve P-384 (ES384)")
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
        alg = "ES384"
    elif isinstance(public, rsa.RSAPublicKey):
        if public.key_size < 2048:
            raise ValueError("an RSA key must have at least 2048 bits")
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        alg = "RS384"
    else:
        raise ValueError("only RSA (RS384) and EC P-384 (ES384) keys can sign client assertions")
    assert isinstance(jwk, dict)
    # Only the members that name the key: no key_ops beside use (RFC 7517 section 4.3).
    out = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}
    out.update(kid=jwk_thumbprint(out), use="sig", alg=alg)
    return check_public_jwk(out)


class PrivateKeyGiven(ValueError):
    """A private key where a partner's public key belongs: refused before it is parsed, so
    that nothing of it can reach an error, a log or the partners file."""

    def __init__(self) -> None:
        super().__init__(
            "this is a private key: give the partner's public key only (the private key "
            "never leaves the partner)"
        )


def jwks_from_pem(data: bytes) -> list[dict[str, Any]]:
    """The JWKs of a PEM file: one or more public keys (``PUBLIC KEY``, or PKCS#1 ``RSA PUBLIC
    KEY``), or one certificate (its subject's key). A file holding any private key is refused
    whole (``PrivateKeyGiven``); a certificate chain is refused too, since every key in it
    would become the partner's. Errors say what is wrong with which block, never its bytes."""
    import re

    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm

    if re.search(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY", data):
        raise PrivateKeyGiven
    found = list(re.finditer(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", data, re.S))
    if not found:
        raise ValueError("no PEM block (-----BEGIN PUBLIC KEY----- or CERTIFICATE)")
    if len(found) > 1 and any(m.group(1) == b"CERTIFICATE" for m in found):
        raise ValueError("give one certificate alone (the partner's own, not a chain)")
    if len(found) > MAX_KEYS_PER_PARTNER:
        raise ValueError(f"at most {MAX_KEYS_PER_PARTNER} keys per partner")
    keys = []
    for index, match in enumerate(found):
        label = match.group(1).decode()
        where = f"PEM block {index + 1} ({label})"
        if label not in ("CERTIFICATE", "PUBLIC KEY", "RSA PUBLIC KEY"):
            raise ValueError(f"{where} is not a public key or a certificate")
        try:
            public: object = (
                x509.load_pem_x509_certificate(match.group(0)).public_key()
                if label == "CERTIFICATE"
                else serialization.load_pem_public_key(match.group(0))
            )
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError(f"{where} does not parse") from None
        try:
            keys.append(jwk_from_public_key(public))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return keys


def partner_problems(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the loader would say of one entry on its own, as ``(field, why)`` pairs (``why``
    never quotes a value); empty when it makes a valid ``Partner``. The checks across entries
    (a repeated id, organization or facility) need the whole file: ``check_partners_file``."""
    try:
        Partner.model_validate(entry)
    except ValidationError as exc:
        return [
            (_format_loc(tuple(error["loc"])) or "(entry)", _message(error))
            for error in exc.errors(include_input=False, include_url=False)
        ]
    return []


def check_partners_file(path: Path, *, allow_demo_placeholder: bool) -> PartnerDirectory:
    """The directory a partners file makes, checked by the loader's own rules, entry and file;
    ``allow_demo_placeholder`` as in demo mode (``serve`` with ``GATEWAY_DEMO=true``).
    ``PartnersFileError`` with the loader's ``file:line: field: why`` lines otherwise."""
    document = _parse(path, allow_demo_placeholder=allow_demo_placeholder)
    return PartnerDirectory(tuple(document.partners))
