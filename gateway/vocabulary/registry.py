"""The resource registry: one definition per resource type the gateway serves, the single truth
that search, the consent engine, scopes, the CapabilityStatement and the policy schema all read.

A definition names the type's search parameters (what a client may search on, advertised by the
CapabilityStatement), its consent fact paths (where ``consent.engine.decide`` finds the patient,
main code, clinical dates, references and authors) and what it allows (AuditEvent is read and
search only: it is served from the audit log). Adding a resource type is adding one definition
here (``docs/contributing.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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


# Consent facts: where, in each type, are the things ``consent.engine.decide`` looks at

CONSENT_PATIENT = "_consent-patient"
CONSENT_ACTOR = "_consent-actor"
ANY_PATIENT = "*"  # not a FHIR id, so never a real patient's
# The labels carried inline by elements of a resource (DS4P): a redaction may remove them.
INLINE_LABEL_PARAM = "_consent-inline"


@dataclass(frozen=True, slots=True)
class FactPaths:
    patient: tuple[str, ...] = ()  # references to the Patient (a Patient: itself)
    codes: tuple[str, ...] = ()  # the main code(s)
    dates: tuple[str, ...] = ()  # clinical date(s): the range is their hull
    references: tuple[str, ...] = ()  # everything it points at
    authors: tuple[str, ...] = ()  # who wrote or asked for it


@dataclass(frozen=True, slots=True)
class ResourceDefinition:
    """One resource type: what a client may search on, where the consent engine finds its
    facts, and whether the resource store holds it (AuditEvent is served, read and search only,
    from the audit log: its search parameters live with the audit review)."""

    name: str
    search: tuple[SearchParam, ...]
    facts: FactPaths
    stored: bool = True


REGISTRY: dict[str, ResourceDefinition] = {
    d.name: d
    for d in (
    ResourceDefinition(
        "Patient",
        search=(
            _p("identifier", T, "identifier"),
            _p("name", S, "name.text", "name.family", "name.given", "name.prefix", "name.suffix"),
            _p("family", S, "name.family"),
            _p("given", S, "name.given"),
            _p("birthdate", D, "birthDate"),
            _p("gender", T, "gender"),
            _p("active", T, "active"),
            _p("organization", R, "managingOrganization", targets=ORG),
        ),
        facts=FactPaths(
            references=(
                "generalPractitioner", "managingOrganization", "link.other", "contact.organization",
            ),
        ),
    ),
    ResourceDefinition(
        "Organization",
        search=(
            _p("identifier", T, "identifier"),
            _p("name", S, "name", "alias"),
            _p("type", T, "type"),
            _p("active", T, "active"),
            _p("partof", R, "partOf", targets=ORG),
        ),
        facts=FactPaths(codes=("type",), references=("partOf", "endpoint")),
    ),
    ResourceDefinition(
        "CarePlan",
        search=(
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
        facts=FactPaths(
            patient=("subject",),
            codes=("category",),
            dates=("period",),
            references=(
                "subject", "basedOn", "replaces", "partOf", "encounter", "author", "contributor",
                "careTeam", "addresses", "supportingInfo", "goal", "activity.reference",
                "activity.outcomeReference", "activity.detail.location",
                "activity.detail.performer", "activity.detail.reasonReference",
                "activity.detail.goal",
            ),
            authors=("author", "contributor"),
        ),
    ),
    ResourceDefinition(
        "Consent",
        search=(
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
        facts=FactPaths(
            patient=("patient",),
            codes=("category",),
            dates=("dateTime",),
            references=(
                "patient", "performer", "organization", "sourceReference",
                "provision.actor.reference", "provision.data.reference",
            ),
            authors=("performer",),
        ),
    ),
    ResourceDefinition(
        "ServiceRequest",
        search=(
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
        facts=FactPaths(
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
    ),
    ResourceDefinition(
        "Task",
        search=(
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
        facts=FactPaths(
            patient=("for",),
            codes=("code",),
            dates=("executionPeriod", "authoredOn"),
            references=(
                "basedOn", "partOf", "focus", "for", "encounter", "requester", "owner", "location",
                "reasonReference", "insurance", "relevantHistory",
            ),
            authors=("requester",),
        ),
    ),
    ResourceDefinition(
        "EpisodeOfCare",
        search=(
            _p("identifier", T, "identifier"),
            _p("patient", R, "patient", targets=PATIENT),
            _p("status", T, "status"),
            _p("type", T, "type"),
            _p("organization", R, "managingOrganization", targets=ORG),
            _p("date", D, "period"),
            _p("incoming-referral", R, "referralRequest", targets=("ServiceRequest",)),
        ),
        facts=FactPaths(
            patient=("patient",),
            codes=("type",),
            dates=("period",),
            references=(
                "patient", "managingOrganization", "referralRequest", "careManager", "team",
                "account", "diagnosis.condition",
            ),
        ),
    ),
    ResourceDefinition(
        "Provenance",
        search=(
            _p("target", R, "target"),
            _p("patient", R, "target", targets=PATIENT),
            _p("agent", R, "agent.who", targets=("Organization", "Patient")),
            _p("entity", R, "entity.what"),
            _p("recorded", D, "recorded"),
        ),
        facts=FactPaths(
            patient=("target",),
            dates=("occurredPeriod", "occurredDateTime", "recorded"),
            references=("target", "location", "agent.who", "agent.onBehalfOf", "entity.what"),
            authors=("agent.who",),
        ),
    ),
    ResourceDefinition(
        "Subscription",
        search=(
            _p("status", T, "status"),
            _p("type", T, "channel.type"),
            _p("url", U, "channel.endpoint"),
            _p("payload", T, "channel.payload"),
            _p("criteria", S, "criteria"),
        ),
        facts=FactPaths(),
    ),
    ResourceDefinition(
        "AuditEvent",
        search=(),
        facts=FactPaths(
            patient=("entity.what",),
            dates=("recorded",),
            references=("agent.who", "entity.what", "source.observer"),
        ),
        stored=False,
    ),
    )
}  # fmt: skip

# Views of the registry, for the layers that read one aspect of it.
PARAMS: dict[str, tuple[SearchParam, ...]] = {t: d.search for t, d in REGISTRY.items() if d.stored}
FACT_PATHS: dict[str, FactPaths] = {t: d.facts for t, d in REGISTRY.items()}

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
