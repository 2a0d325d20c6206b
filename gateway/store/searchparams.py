"""Search parameters the gateway supports, and their extraction at write time.

Each resource version is reduced, when it is written, to ``IndexEntry`` rows (token, reference,
date, string), so that a search runs on the index and never decrypts a row it will not return.
The table below is also what the CapabilityStatement advertises: it is the single truth.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from gateway.errors import BadRequest
from gateway.vocabulary.codesystems import canonical_system
from gateway.vocabulary.references import parse_local
from gateway.vocabulary.security import INLINE_LABEL


class Kind(StrEnum):
    TOKEN = "token"  # noqa: S105 (a FHIR search type)
    REFERENCE = "reference"
    DATE = "date"
    STRING = "string"
    URI = "uri"


@dataclass(frozen=True, slots=True)
class SearchParam:
    name: str
    kind: Kind
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()  # for references: resource types it may point at
    description: str = ""


class IndexEntry(NamedTuple):
    """One index row. A tuple: immutable, hashable, and cheap to build (a search under consent
    builds hundreds from the index; a frozen dataclass cost more than the query)."""

    param: str
    system: str | None = None
    code: str | None = None
    text: str | None = None  # normalised: accent- and case-folded
    raw: str | None = None  # as written, for :exact
    ref_type: str | None = None
    ref_id: str | None = None
    low: str | None = None  # date range, as UTC timestamp strings (sortable)
    high: str | None = None


def _p(
    name: str, kind: Kind, *paths: str, targets: tuple[str, ...] = (), doc: str = ""
) -> SearchParam:
    return SearchParam(name, kind, paths, targets, doc)


T, R, D, S, U = Kind.TOKEN, Kind.REFERENCE, Kind.DATE, Kind.STRING, Kind.URI
PATIENT = ("Patient",)
ORG = ("Organization",)

COMMON: tuple[SearchParam, ...] = (
    _p("_tag", T, "meta.tag", doc="Tags on the resource"),
    _p("_security", T, "meta.security", doc="Security labels on the resource"),
    _p("_profile", U, "meta.profile", doc="Profiles the resource claims"),
)

PARAMS: dict[str, tuple[SearchParam, ...]] = {
    "Patient": (
        _p("identifier", T, "identifier"),
        _p("name", S, "name.text", "name.family", "name.given", "name.prefix", "name.suffix"),
        _p("family", S, "name.family"),
        _p("given", S, "name.given"),
        _p("birthdate", D, "birthDate"),
        _p("gender", T, "gender"),
        _p("active", T, "active"),
        _p("organization", R, "managingOrganization", targets=ORG),
    ),
    "Organization": (
        _p("identifier", T, "identifier"),
        _p("name", S, "name", "alias"),
        _p("type", T, "type"),
        _p("active", T, "active"),
        _p("partof", R, "partOf", targets=ORG),
    ),
    "CarePlan": (
        _p("identifier", T, "identifier"),
        _p("patient", R, "subject", targets=PATIENT),
        _p("subject", R, "subject", targets=("Patient", "Group")),
        _p("status", T, "status"),
        _p("intent", T, "intent"),
        _p("category", T, "category"),
        _p("date", D, "period"),
        _p("based-on", R, "basedOn", targets=("CarePlan",)),
        _p("part-of", R, "partOf", targets=("CarePlan",)),
    ),
    "Consent": (
        _p("identifier", T, "identifier"),
        _p("patient", R, "patient", targets=PATIENT),
        _p("status", T, "status"),
        _p("scope", T, "scope"),
        _p("category", T, "category"),
        _p("date", D, "dateTime"),
        _p("period", D, "provision.period"),
        _p("actor", R, "provision.actor.reference", targets=("Organization", "Patient")),
        _p("action", T, "provision.action"),
        _p("purpose", T, "provision.purpose"),
        _p("security-label", T, "provision.securityLabel"),
        _p("organization", R, "organization", targets=ORG),
        _p("consentor", R, "performer", targets=("Organization", "Patient")),
        _p("source-reference", R, "sourceReference"),
    ),
    "ServiceRequest": (
        _p("identifier", T, "identifier"),
        _p("patient", R, "subject", targets=PATIENT),
        _p("subject", R, "subject", targets=("Patient", "Group")),
        _p("status", T, "status"),
        _p("intent", T, "intent"),
        _p("category", T, "category"),
        _p("code", T, "code"),
        _p("performer", R, "performer", targets=("Organization", "Patient")),
        _p("requester", R, "requester", targets=("Organization", "Patient")),
        _p("authored", D, "authoredOn"),
        _p("occurrence", D, "occurrenceDateTime", "occurrencePeriod"),
        _p("based-on", R, "basedOn", targets=("CarePlan", "ServiceRequest")),
    ),
    "Task": (
        _p("identifier", T, "identifier"),
        _p("patient", R, "for", targets=PATIENT),
        _p("subject", R, "for"),
        _p("status", T, "status"),
        _p("business-status", T, "businessStatus"),
        _p("intent", T, "intent"),
        _p("code", T, "code"),
        _p("owner", R, "owner", targets=("Organization", "Patient")),
        _p("requester", R, "requester", targets=("Organization", "Patient")),
        _p("focus", R, "focus"),
        _p("based-on", R, "basedOn"),
        _p("part-of", R, "partOf", targets=("Task",)),
        _p("authored-on", D, "authoredOn"),
        _p("modified", D, "lastModified"),
    ),
    "EpisodeOfCare": (
        _p("identifier", T, "identifier"),
        _p("patient", R, "patient", targets=PATIENT),
        _p("status", T, "status"),
        _p("type", T, "type"),
        _p("organization", R, "managingOrganization", targets=ORG),
        _p("date", D, "period"),
        _p("incoming-referral", R, "referralRequest", targets=("ServiceRequest",)),
    ),
    "Provenance": (
        _p("target", R, "target"),
        _p("patient", R, "target", targets=PATIENT),
        _p("agent", R, "agent.who", targets=("Organization", "Patient")),
        _p("entity", R, "entity.what"),
        _p("recorded", D, "recorded"),
    ),
    "Subscription": (
        _p("status", T, "status"),
        _p("type", T, "channel.type"),
        _p("url", U, "channel.endpoint"),
        _p("payload", T, "channel.payload"),
        _p("criteria", S, "criteria"),
    ),
}

# ---------------------------------------------------------------------------------------------
# Consent facts: where, in each type, are the things ``consent.engine.decide`` looks at

CONSENT_PATIENT = "_consent-patient"
CONSENT_ACTOR = "_consent-actor"
ANY_PATIENT = "*"  # not a FHIR id, so never a real patient's
ANY_PATIENT_ENTRY = IndexEntry(CONSENT_PATIENT, ref_type="Patient", ref_id=ANY_PATIENT)
# An actor a Consent names that is not a local record (a foreign URL, an identifier): a deny
# naming it applies to every requester (fail closed), so the probe must find it too.
ANY_ACTOR_ENTRY = IndexEntry(CONSENT_ACTOR, ref_type="*", ref_id="*")
# The labels carried inline by elements of a resource (DS4P): a redaction may remove them.
INLINE_LABEL_PARAM = "_consent-inline"


@dataclass(frozen=True, slots=True)
class FactPaths:
    patient: tuple[str, ...] = ()  # references to the Patient (a Patient: itself)
    codes: tuple[str, ...] = ()  # the main code(s)
    dates: tuple[str, ...] = ()  # clinical date(s): the range is their hull
    references: tuple[str, ...] = ()  # everything it points at
    authors: tuple[str, ...] = ()  # who wrote or asked for it


FACT_PATHS: dict[str, FactPaths] = {
    "Patient": FactPaths(
        references=(
            "generalPractitioner", "managingOrganization", "link.other", "contact.organization",
        ),
    ),
    "Organization": FactPaths(codes=("type",), references=("partOf", "endpoint")),
    "CarePlan": FactPaths(
        patient=("subject",),
        codes=("category",),
        dates=("period",),
        references=(
            "subject", "basedOn", "replaces", "partOf", "encounter", "author", "contributor",
            "careTeam", "addresses", "supportingInfo", "goal", "activity.reference",
            "activity.outcomeReference", "activity.detail.location", "activity.detail.performer",
            "activity.detail.reasonReference", "activity.detail.goal",
        ),
        authors=("author", "contributor"),
    ),
    "ServiceRequest": FactPaths(
        patient=("subject",),
        codes=("code",),
        dates=("occurrenceDateTime", "occurrencePeriod", "authoredOn"),
        references=(
            "subject", "basedOn", "replaces", "encounter", "requester", "performer",
            "locationReference", "reasonReference", "insurance", "supportingInfo",
            "specimen", "relevantHistory",
        ),
        authors=("requester",),
    ),
    "Task": FactPaths(
        patient=("for",),
        codes=("code",),
        dates=("executionPeriod", "authoredOn"),
        references=(
            "basedOn", "partOf", "focus", "for", "encounter", "requester", "owner", "location",
            "reasonReference", "insurance", "relevantHistory",
        ),
        authors=("requester",),
    ),
    "Consent": FactPaths(
        patient=("patient",),
        codes=("category",),
        dates=("dateTime",),
        references=(
            "patient", "performer", "organization", "sourceReference",
            "provision.actor.reference", "provision.data.reference",
        ),
        authors=("performer",),
    ),
    "EpisodeOfCare": FactPaths(
        patient=("patient",),
        codes=("type",),
        dates=("period",),
        references=(
            "patient", "managingOrganization", "referralRequest", "careManager", "team",
            "account", "diagnosis.condition",
        ),
    ),
    "Provenance": FactPaths(
        patient=("target",),
        dates=("occurredPeriod", "occurredDateTime", "recorded"),
        references=("target", "location", "agent.who", "agent.onBehalfOf", "entity.what"),
        authors=("agent.who",),
    ),
    "AuditEvent": FactPaths(
        patient=("entity.what",),
        dates=("recorded",),
        references=("agent.who", "entity.what", "source.observer"),
    ),
    "Subscription": FactPaths(),
}  # fmt: skip

# Provision trees nest; the JSON depth limit (64) bounds how deep an actor can sit.
_ACTOR_PATHS = tuple(
    ".".join(["provision"] * depth + ["actor", "reference"]) for depth in range(1, 32)
)

# The index rows that let the store derive the same facts without decrypting
# (``consent.engine.facts_from_index``), written next to ``_security`` for every version. They
# are internal: not search parameters a client may use, not advertised. ``_consent-actor``
# (every actor a Consent names, at any depth) lets the store narrow a search to the patients who
# named the requester before it asks the engine anything: a permit releases only to an actor
# named on its path.
FACT_PARAMS: dict[str, tuple[SearchParam, ...]] = {
    rtype: tuple(
        SearchParam(name, kind, paths, targets)
        for name, kind, paths, targets in (
            (CONSENT_PATIENT, Kind.REFERENCE, fp.patient, ("Patient",)),
            ("_consent-code", Kind.TOKEN, fp.codes, ()),
            ("_consent-date", Kind.DATE, fp.dates, ()),
            ("_consent-ref", Kind.REFERENCE, fp.references, ()),
            ("_consent-author", Kind.REFERENCE, fp.authors, ()),
        )
        if paths
    )
    for rtype, fp in FACT_PATHS.items()
}
FACT_PARAMS["Consent"] += (SearchParam(CONSENT_ACTOR, Kind.REFERENCE, _ACTOR_PATHS),)
FACT_PARAM_NAMES = frozenset(
    {"_security", INLINE_LABEL_PARAM, *(p.name for params in FACT_PARAMS.values() for p in params)}
)
# Facts no SQL statement looks for: kept only in the resource's sealed facts (``sql``), never as
# index rows, so the blind index holds no clinical code or date it does not search on.
CONSENT_FACT_ONLY = frozenset(
    {"_consent-code", "_consent-date", "_consent-ref", "_consent-author", INLINE_LABEL_PARAM}
)
# A flag row on every active Consent: the consent probe's "active" test without a status value.
CONSENT_ACTIVE = "_consent-active"
CONSENT_ACTIVE_ENTRY = IndexEntry(CONSENT_ACTIVE)

RESOURCE_TYPES: tuple[str, ...] = tuple(PARAMS)

# Result parameters and special parameters that are not index lookups.
CONTROL_PARAMS = frozenset(
    {
        "_count",
        "_sort",
        "_summary",
        "_include",
        "_revinclude",
        "_format",
        "_pretty",
        "_cursor",
        "_total",
    }
)


def params_for(resource_type: str) -> dict[str, SearchParam]:
    return {p.name: p for p in (*PARAMS[resource_type], *COMMON)}


_BY_TYPE: dict[str, dict[str, SearchParam]] = {t: params_for(t) for t in PARAMS}


def lookup(resource_type: str, name: str) -> SearchParam | None:
    return _BY_TYPE.get(resource_type, {}).get(name)


# ---------------------------------------------------------------------------------------------
# Extraction


# Per type: (parameter, path split into steps), computed once; the client's parameters and the
# internal consent facts.
_PLAN: dict[str, tuple[tuple[SearchParam, tuple[str, ...]], ...]] = {
    t: tuple(
        (p, tuple(path.split(".")))
        for p in (*by_name.values(), *FACT_PARAMS.get(t, ()))
        for path in p.paths
    )
    for t, by_name in _BY_TYPE.items()
}


def extract(resource: dict[str, Any]) -> list[IndexEntry]:
    """All index rows for one resource; duplicates removed, order stable."""
    entries: dict[IndexEntry, None] = {}
    for param, steps in _PLAN[resource["resourceType"]]:
        for value in values_at(resource, steps):
            for entry in _entries(param, value):
                entries[entry] = None
    if resource["resourceType"] == "Consent" and not any(
        e.param == CONSENT_PATIENT for e in entries
    ):
        # A Consent whose patient cannot be read still denies (for every patient of its
        # recorder): it is filed under every patient, so that it is read with each one's.
        entries[ANY_PATIENT_ENTRY] = None
    if resource["resourceType"] == "Consent" and resource.get("status") == "active":
        entries[CONSENT_ACTIVE_ENTRY] = None
    for label in sorted(_inline_labels(resource)):
        entries[IndexEntry(INLINE_LABEL_PARAM, code=label)] = None
    return list(entries)


def _inline_labels(resource: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("url") == INLINE_LABEL:
                coding = node.get("valueCoding")
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    found.add(coding["code"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def values_at(resource: Any, steps: Sequence[str]) -> list[Any]:
    """The values at a dotted path, lists flattened at every step (FHIRPath-style)."""
    nodes: list[Any] = [resource]
    for step in steps:
        found: list[Any] = []
        for node in nodes:
            if isinstance(node, dict):
                value = node.get(step)
                if isinstance(value, list):
                    found.extend(value)
                elif value is not None:
                    found.append(value)
        if not found:
            return found
        nodes = found
    return nodes


def _entries(param: SearchParam, value: Any) -> Iterator[IndexEntry]:
    if param.kind is Kind.TOKEN:
        yield from _tokens(param.name, value)
    elif param.name == CONSENT_ACTOR:
        ref = _reference(value)
        yield IndexEntry(param.name, ref_type=ref[0], ref_id=ref[1]) if ref else ANY_ACTOR_ENTRY
    elif param.kind is Kind.REFERENCE:
        ref = _reference(value)
        if ref and (not param.targets or ref[0] in param.targets):
            yield IndexEntry(param.name, ref_type=ref[0], ref_id=ref[1])
    elif param.kind is Kind.DATE:
        span = _date_span(value)
        if span:
            yield IndexEntry(param.name, low=span[0], high=span[1])
    elif param.kind in (Kind.STRING, Kind.URI) and isinstance(value, str):
        yield IndexEntry(param.name, text=normalise(value), raw=value)


def _tokens(name: str, value: Any) -> Iterator[IndexEntry]:
    """Token rows. Systems are indexed canonical (``gateway.vocabulary.codesystems``: an alias
    of a listed code system as its URI, any other system as written), so that search and
    consent compare one code system alike however it was spelt; the resource keeps its own."""
    if isinstance(value, bool):
        yield IndexEntry(name, code="true" if value else "false")
    elif isinstance(value, str):
        yield IndexEntry(name, code=value)
    elif isinstance(value, dict):
        if "coding" in value:  # CodeableConcept
            for coding in value.get("coding") or []:
                if isinstance(coding, dict) and coding.get("code"):
                    system = canonical_system(coding.get("system"))
                    yield IndexEntry(name, system=system, code=coding["code"])
        elif "value" in value and isinstance(value["value"], str):  # Identifier
            system = canonical_system(value.get("system"))
            yield IndexEntry(name, system=system, code=value["value"])
        elif value.get("code"):  # Coding
            yield IndexEntry(name, system=canonical_system(value.get("system")), code=value["code"])


def _reference(value: Any) -> tuple[str, str] | None:
    """A local reference only: relative ``Type/id[/_history/n]``; an absolute URL names another
    server (``gateway.vocabulary.references``)."""
    ref = parse_local(value.get("reference")) if isinstance(value, dict) else None
    return (ref.resource_type, ref.id) if ref is not None else None


def normalise(text: str) -> str:
    """FHIR string search: case- and accent-insensitive."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


# Dates are kept as fixed-width UTC strings so that SQL compares them as text on both databases.
def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _date_span(value: Any) -> tuple[str, str] | None:
    if isinstance(value, dict):  # Period
        start = parse_date_range(value["start"])[0] if isinstance(value.get("start"), str) else None
        end = parse_date_range(value["end"])[1] if isinstance(value.get("end"), str) else None
        if start is None and end is None:
            return None
        return start or _EARLIEST, end or _LATEST
    if isinstance(value, str):
        try:
            return parse_date_range(value)
        except BadRequest:
            return None
    return None


def parse_date_range(text: str) -> tuple[str, str]:
    """The implicit range of a FHIR date/dateTime/instant, as (low, high) stamps inclusive. At
    the edges of the calendar (9999-12-31, or 0001-01-01 with an offset east of UTC) a bound a
    timestamp cannot hold is the earliest or the latest stamp, never an error."""
    try:
        if len(text) == 4:
            start, precision = _utc(int(text), 1, 1), "year"
        elif len(text) == 7:
            start, precision = _utc(int(text[:4]), int(text[5:7]), 1), "month"
        elif len(text) == 10:
            d = date.fromisoformat(text)
            start, precision = _utc(d.year, d.month, d.day), "day"
        else:
            start = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if start.tzinfo is None:
                start = start.replace(tzinfo=UTC)
            # A dateTime given to the second covers that whole second.
            precision = "second" if start.microsecond == 0 and "." not in text else "instant"
    except ValueError as exc:
        raise BadRequest("invalid date value") from exc
    late = start.year > 5000
    try:
        low = stamp(start)
    except OverflowError:
        low = _LATEST if late else _EARLIEST
    try:
        high = stamp(_last_instant(start, precision))
    except (OverflowError, ValueError):
        high = _LATEST if late else _EARLIEST
    return low, high


def _last_instant(start: datetime, precision: str) -> datetime:
    if precision == "year":
        return _utc(start.year + 1, 1, 1) - _TICK
    if precision == "month":
        return _utc(start.year + (start.month == 12), start.month % 12 + 1, 1) - _TICK
    if precision == "day":
        return start + timedelta(days=1) - _TICK
    if precision == "second":
        return start + timedelta(seconds=1) - _TICK
    return start


_TICK = timedelta(microseconds=1)
_EARLIEST = stamp(datetime.min.replace(tzinfo=UTC))
_LATEST = stamp(datetime.max.replace(tzinfo=UTC))


def _utc(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)
