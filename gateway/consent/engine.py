"""The consent engine: ``decide`` whether a partner may see one resource. Pure: no I/O, no
database, no clock (``now`` is an argument). Redaction is a separate step (``consent.redact``).

The rules (DESIGN.md section 3, "Consent semantics", implemented word for word):

1. The partner that contributed a record may always read it back.
2. Any other partner sees a patient's resource only when the network policy allows it **and**
   an active Consent of that patient, **recorded by the resource's contributor**, permits it,
   and no such Consent denies it (**deny overrides permit**; no permit means not visible; deny
   by default). A Consent is its recorder's release of its own records: nothing one partner
   records can release, or block, another partner's records.
3. A Consent counts when ``status = active``, ``scope`` is patient-privacy (system
   http://terminology.hl7.org/CodeSystem/consentscope), ``patient`` is the patient and now is
   inside ``provision.period`` (the root's) when given.
4. A provision *applies* to a (request, resource) pair when every element it gives matches:
   ``actor`` (the requester's Organization is among the actor references; a **permit without
   any actor in itself or its ancestors releases to nobody**, a deny without actor applies to
   everyone), ``action`` (includes access or disclose, system
   http://terminology.hl7.org/CodeSystem/consentaction), ``purpose`` (the request's purpose of
   use is among them), ``class`` (resource type, system http://hl7.org/fhir/resource-types),
   ``code`` (the resource's main code), ``securityLabel`` (as in R4: the resource carries
   **all** the listed labels), ``dataPeriod`` (overlaps the resource's clinical period),
   ``data`` (meaning instance: the resource itself; related/dependents: the resource itself or
   a resource that references the item; authoredby: the item is among the resource's
   authors), ``period`` (now is inside it).
5. Nested provisions are exceptions: a child applies only where its parent applies, and the
   deepest applicable provision of a Consent gives that Consent's answer (its ``type``, permit
   or deny). If the root does not apply, that Consent abstains.
6. A resource carrying a label the policy lists as needing explicit consent (default ETH, PSY,
   SDV, LOCIS; plus the requester kind's ``labels_needing_provision``) is released only by a
   permit provision that lists that label itself (or whose ancestor does) and names the
   recipient.
7. Shelter data (contributed by a partner of a kind in ``policy.shelter_kinds``) is released only
   under a Consent with a written source (``sourceAttachment`` or ``sourceReference``) and a
   ``provision.period`` whose end is no more than the policy's maximum (default 365 days)
   after its start (VAWA: written, time-limited release).
8. Emergency access (policy ``emergency``): a request whose purposes include one of the rule's
   (ETREAT, BTG) from one of its partner kinds (hospital, clinic) sees only the listed resource
   types, flagged ``break_glass=True``; never explicit-consent-labelled resources unless the
   rule lists the label, never shelter data unless the rule says so; a Consent deny naming
   that partner (an actor on the deny's path) still wins.

Where the contract is silent, the engine chooses the answer that discloses less (see
docs/consent.md, "Decisions"), notably:
- sibling provisions that both apply and disagree: deny wins (the answer of a provision is the
  deepest applicable provision *of each branch*, combined deny-overrides);
- a request with several purposes of use: a permit's ``purpose`` must cover all of them, a
  deny's applies if it names any of them;
- anything unreadable makes a permit apply to nothing and a deny apply more widely.

Every ``Decision`` names the rule that decided (``contributor``, ``policy:…``,
``consent:Consent/<id>#provision.provision[0]``, ``explicit-label``, ``shelter:…``,
``emergency:<id>``, ``no-permit``), and the Consent and provision path when one decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.consent.model import (
    ParsedConsent,
    ParsedProvision,
    Unreadable,
    parse_period,
)
from gateway.consent.policy import EmergencyRule, KindRule, Obligation, Policy
from gateway.vocabulary.codesystems import canonical_system
from gateway.vocabulary.index import IndexEntry, values_at
from gateway.vocabulary.references import local_reference, reference_of
from gateway.vocabulary.registry import (
    ANY_PATIENT,
    CONSENT_PATIENT,
    FACT_PARAMS,
    FACT_PATHS,
    FactPaths,
)

__all__ = [
    "FACT_PARAMS",
    "FACT_PATHS",
    "AccessRequest",
    "Decision",
    "Obligation",
    "ResourceFacts",
    "decide",
    "decision_key",
    "facets_examined",
    "facts_from_index",
    "facts_from_resource",
    "patient_from_index",
    "patient_of",
    "policy_facts",
]


@dataclass(frozen=True, slots=True)
class AccessRequest:
    partner_id: str
    partner_kind: str  # shelter | legal-aid | clinic | hospital | compliance | admin
    organization: str  # "Organization/harbor-clinic"
    purposes: tuple[str, ...]  # v3 PurposeOfUse codes (TREAT, ETREAT, BTG, COC, HLEGAL, ...)
    interaction: str  # read | vread | history | search | include | create | update | delete


@dataclass(frozen=True, slots=True)
class ResourceFacts:
    """Everything ``decide`` needs about one resource; no body required."""

    resource_type: str
    id: str
    patient_id: str | None  # the Patient it belongs to (a Patient: its own id)
    labels: frozenset[str]  # meta.security codes (N/R/V, ETH, PSY, SDV, LOCIS, ...)
    contributor: str | None  # partner id that contributed it
    contributor_kind: str | None
    codes: frozenset[tuple[str | None, str]]  # main code(s), see FACT_PATHS
    clinical_period: tuple[str, str] | None  # UTC stamps (vocabulary.dates.stamp)
    references: frozenset[str]  # "Type/id" it points at
    authors: frozenset[str]  # "Type/id" of its author/requester/recorder


@dataclass(frozen=True, slots=True)
class Decision:
    permit: bool
    rule: str
    consent: str | None
    provision_path: str | None
    obligations: tuple[Obligation, ...] = ()
    break_glass: bool = False


# ---------------------------------------------------------------------------------------------
# Facts (where they are in each type: ``vocabulary.registry.FACT_PATHS``)


def _values(node: Any, path: str) -> list[Any]:
    return values_at(node, path.split("."))


def _concept_codings(concept: Any) -> list[dict[str, Any]]:
    coding = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in coding if isinstance(c, dict)] if isinstance(coding, list) else []


def _refs(resource: dict[str, Any], paths: Iterable[str]) -> frozenset[str]:
    return frozenset(r for p in paths for v in _values(resource, p) if (r := reference_of(v)))


def _single_patient(refs: Iterable[str]) -> str | None:
    """The one Patient referenced; None when none or several (fail closed)."""
    ids = {r[8:] for r in refs if r[:8] == "Patient/"}
    return ids.pop() if len(ids) == 1 else None


def _hull(spans: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    spans = list(spans)
    if not spans:
        return None
    return min(s[0] for s in spans), max(s[1] for s in spans)


def _date_span(value: Any) -> tuple[str, str] | None:
    try:
        if isinstance(value, str):
            return parse_period({"start": value, "end": value})
        return parse_period(value)
    except Unreadable:  # an unreadable date is no date (validation on write rejects it)
        return None


def facts_from_resource(
    resource: dict[str, Any], *, contributor: str | None, contributor_kind: str | None
) -> ResourceFacts:
    """Pure extraction of the facts ``decide`` needs from an R4 resource dict (see FACT_PATHS)."""
    rtype = resource.get("resourceType")
    rtype = rtype if isinstance(rtype, str) else ""
    rid = resource.get("id")
    rid = rid if isinstance(rid, str) else ""
    paths = FACT_PATHS.get(rtype, FactPaths())
    meta = resource.get("meta")
    security = meta.get("security") if isinstance(meta, dict) else None
    labels = frozenset(
        c["code"]
        for c in (security if isinstance(security, list) else ())
        if isinstance(c, dict) and isinstance(c.get("code"), str) and c["code"]
    )
    codes = frozenset(
        (canonical_system(c["system"]) if isinstance(c.get("system"), str) else None, c["code"])
        for p in paths.codes
        for concept in _values(resource, p)
        for c in _concept_codings(concept)
        if isinstance(c.get("code"), str) and c["code"]
    )
    spans = (s for p in paths.dates for v in _values(resource, p) if (s := _date_span(v)))
    return ResourceFacts(
        resource_type=rtype,
        id=rid,
        patient_id=rid if rtype == "Patient" else _single_patient(_refs(resource, paths.patient)),
        labels=labels,
        contributor=contributor,
        contributor_kind=contributor_kind,
        codes=codes,
        clinical_period=_hull(spans),
        references=_refs(resource, paths.references),
        authors=_refs(resource, paths.authors),
    )


def policy_facts(
    resource: dict[str, Any],
    patient_id: str | None,
    *,
    contributor: str | None,
    contributor_kind: str | None,
) -> ResourceFacts:
    """The facts ``decide`` reads when it is given no Consents (type, patient, labels,
    contributor): with no Consent there is no provision to test codes, dates or references
    against, so they are left empty. Cheaper than ``facts_from_resource``, and what a refusal
    must cost: no more than asking about an id that never existed."""
    rtype = resource.get("resourceType")
    rid = resource.get("id")
    meta = resource.get("meta")
    security = meta.get("security") if isinstance(meta, dict) else None
    return ResourceFacts(
        resource_type=rtype if isinstance(rtype, str) else "",
        id=rid if isinstance(rid, str) else "",
        patient_id=patient_id,
        labels=frozenset(
            c["code"]
            for c in (security if isinstance(security, list) else ())
            if isinstance(c, dict) and isinstance(c.get("code"), str) and c["code"]
        ),
        contributor=contributor,
        contributor_kind=contributor_kind,
        codes=frozenset(),
        clinical_period=None,
        references=frozenset(),
        authors=frozenset(),
    )


def patient_of(resource: dict[str, Any]) -> str | None:
    """The Patient a resource belongs to (a Patient: itself), as ``facts_from_resource``
    finds it; None when none or several."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    paths = FACT_PATHS.get(rtype if isinstance(rtype, str) else "", FactPaths())
    return _single_patient(_refs(resource, paths.patient))


def patient_from_index(
    resource_type: str, resource_id: str, entries: Iterable[IndexEntry]
) -> str | None:
    """The patient ``facts_from_index`` finds for these rows (a Patient: itself)."""
    if resource_type == "Patient":
        return resource_id
    return _single_patient(
        ref
        for e in entries
        if e.param == CONSENT_PATIENT
        and e.ref_type
        and e.ref_id
        and e.ref_id != ANY_PATIENT
        and (ref := local_reference(f"{e.ref_type}/{e.ref_id}"))
    )


def facts_from_index(
    resource_type: str,
    resource_id: str,
    entries: Iterable[IndexEntry],
    *,
    contributor: str | None,
    contributor_kind: str | None,
) -> ResourceFacts:
    """The same facts as ``facts_from_resource``, from the index rows of the current version:
    ``_security`` plus the ``FACT_PARAMS`` rows (``_consent-patient``, ``-code``, ``-date``,
    ``-ref``, ``-author``), so that search can filter without decrypting."""
    entries = list(entries)
    labels: set[str] = set()
    codes: set[tuple[str | None, str]] = set()
    spans: list[tuple[str, str]] = []
    refs: set[str] = set()
    authors: set[str] = set()
    for e in entries:
        param = e.param
        if param == "_security" and e.code:
            labels.add(e.code)
        elif param == "_consent-code" and e.code:
            codes.add((e.system, e.code))
        elif param == "_consent-date" and e.low and e.high:
            spans.append((e.low, e.high))
        elif e.ref_type and e.ref_id and param in ("_consent-ref", "_consent-author"):
            ref = local_reference(f"{e.ref_type}/{e.ref_id}")
            if ref is None:
                continue
            (refs if param == "_consent-ref" else authors).add(ref)
    return ResourceFacts(
        resource_type=resource_type,
        id=resource_id,
        patient_id=patient_from_index(resource_type, resource_id, entries),
        labels=frozenset(labels),
        contributor=contributor,
        contributor_kind=contributor_kind,
        codes=frozenset(codes),
        clinical_period=_hull(spans),
        references=frozenset(refs),
        authors=frozenset(authors),
    )


# Which index rows each optional fact comes from (see ``decision_key``).
_FACET_PARAMS = {
    "codes": frozenset({"_consent-code"}),
    "dates": frozenset({"_consent-date"}),
    "data": frozenset({"_consent-ref", "_consent-author"}),
}
_ALWAYS_EXAMINED = frozenset({"_security", CONSENT_PATIENT})


def facets_examined(consents: Iterable[ParsedConsent]) -> frozenset[str]:
    """The facts beyond type, patient, labels and contributor that some provision of these
    Consents tests: ``codes`` (a ``code``), ``dates`` (a ``dataPeriod``), ``data`` (a
    ``data``: references, authors and the resource's own id)."""
    found: set[str] = set()
    stack = [c.root for c in consents if c.root is not None]
    while stack:
        p = stack.pop()
        if p.codes is not None:
            found.add("codes")
        if p.data_period is not None:
            found.add("dates")
        if p.data is not None:
            found.add("data")
        stack.extend(p.children)
    return frozenset(found)


def decision_key(
    resource_type: str,
    resource_id: str,
    contributor: str | None,
    entries: Iterable[IndexEntry],
    facets: frozenset[str],
) -> tuple[object, ...]:
    """Two resources of one patient with equal keys get the same ``decide`` answer from the
    same request, Consents (whose ``facets_examined`` are ``facets``), policy and time: the key
    holds every fact ``decide`` and the obligations read (type, contributor, labels, patient;
    policy and emergency rules read nothing else) plus the facts those Consents test. A search
    then decides once per class, not once per resource (a survivor's plans and referrals from
    one partner mostly share their labels)."""
    params = _ALWAYS_EXAMINED.union(*(_FACET_PARAMS[f] for f in facets))
    own_id = resource_id if resource_type == "Patient" or "data" in facets else None
    return (
        resource_type,
        contributor,
        own_id,
        frozenset(e for e in entries if e.param in params),
    )


# ---------------------------------------------------------------------------------------------
# Decide


CONTRIBUTOR = Decision(True, "contributor", None, None)


def _applies(
    p: ParsedProvision,
    org: str,
    purposes: tuple[str, ...],
    res: ResourceFacts,
    now: datetime,
) -> bool:
    """Rule 4: every element the provision gives matches (fail-closed readings in model.py)."""
    if p.never:
        return False
    deny = p.deny
    if p.actors is not None and org not in p.actors and not p.actor_wild:
        return False
    if p.period is not None and not (p.period[0] <= now <= p.period[1]):
        return False
    if p.purposes is not None:
        if deny:
            if purposes and p.purposes.isdisjoint(purposes):
                return False
        elif not purposes or not p.purposes.issuperset(purposes):
            return False
    if p.classes is not None and res.resource_type not in p.classes:
        return False
    if p.labels is not None and not p.labels <= res.labels:
        return False
    if (
        p.codes is not None
        and p.codes.isdisjoint(res.codes)
        and not (p.bare_codes and any(code in p.bare_codes for _, code in res.codes))
    ):
        return False
    if p.data_period is not None:
        cp = res.clinical_period
        if cp is None:
            if not deny:
                return False
        elif not (p.data_period[0] <= cp[1] and cp[0] <= p.data_period[1]):
            return False
    return p.data is None or p.data_wild or _data_matches(p.data, res)


def _data_matches(data: tuple[tuple[str, str], ...], res: ResourceFacts) -> bool:
    own = f"{res.resource_type}/{res.id}"
    for meaning, ref in data:
        if meaning == "authoredby":
            if ref in res.authors:
                return True
        elif ref == own or (meaning != "instance" and ref in res.references):
            return True
    return False


_Answer = tuple[ParsedProvision | None, tuple[ParsedProvision, ...]]


def _answer(
    p: ParsedProvision, org: str, purposes: tuple[str, ...], res: ResourceFacts, now: datetime
) -> _Answer | None:
    """Rule 5. None: the provision does not apply. Else (the deciding deny, or None and the
    deciding permits): the deepest applicable provision of each branch, deny-overrides."""
    if not _applies(p, org, purposes, res, now):
        return None
    permits: tuple[ParsedProvision, ...] = ()
    for child in p.children:
        sub = _answer(child, org, purposes, res, now)
        if sub is None:
            continue
        if sub[0] is not None:
            return sub
        permits += sub[1]
    if permits:
        return None, permits
    return (p, ()) if p.deny else (None, (p,))


def _ref(consent: ParsedConsent, p: ParsedProvision) -> str:
    return f"consent:{consent.reference}#{p.path}"


DIRECTORY_WRITER_KINDS = frozenset({"admin"})


def decide(
    request: AccessRequest,
    resource: ResourceFacts,
    consents: Sequence[ParsedConsent],
    policy: Policy,
    now: datetime,
) -> Decision:
    """May ``request``'s partner see ``resource``? Rules 1-8 in the module docstring.

    ``consents`` are the patient's parsed Consents (others are ignored); ``now`` is the
    decision time (a naive datetime is read as UTC). Never raises on well-typed input.
    """
    # Rule 1: the contributor reads its own record back.
    if resource.contributor is not None and request.partner_id == resource.contributor:
        return CONTRIBUTOR
    kind = policy.kinds.get(request.partner_kind)
    if kind is None:
        return Decision(False, f"policy:unknown-kind:{request.partner_kind}", None, None)
    if resource.patient_id is None:
        # Directory entries are what the gateway or a network administrator wrote. A partner's
        # own Organization record may carry a shelter's address: it is that partner's data.
        directory_writer = resource.contributor is None or resource.contributor_kind in (
            DIRECTORY_WRITER_KINDS
        )
        if resource.resource_type in policy.directory_types and directory_writer:
            return Decision(True, "policy:directory", None, None)
        return Decision(False, "policy:no-patient", None, None)
    never = resource.labels & kind.never_labels
    if never:
        return Decision(False, "policy:never-label", None, None)

    emergency = _emergency_rule(request, resource, policy, kind)
    shared = resource.resource_type in kind.resource_types
    if not shared and emergency is None:
        return Decision(False, f"policy:type-not-shared:{request.partner_kind}", None, None)

    # Rules 2-5: the patient's Consents that count, each giving a deny, permits, or nothing.
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    org, purposes, patient = request.organization, request.purposes, resource.patient_id
    denied: tuple[ParsedConsent, ParsedProvision] | None = None
    named_deny = False
    permits: list[tuple[ParsedConsent, ParsedProvision]] = []
    for c in consents:
        # Consent authority: a Consent governs only the records its own recorder contributed.
        if not c.counts or c.root is None or c.recorder != resource.contributor:
            continue
        if c.patient_id != patient and not c.any_patient:
            continue
        if c.period is not None and not (c.period[0] <= now <= c.period[1]):
            continue
        answer = _answer(c.root, org, purposes, resource, now)
        if answer is None:
            continue
        deny, granted = answer
        if deny is not None:
            if denied is None:
                denied = (c, deny)
            if deny.names_actor:
                named_deny = True
                denied = (c, deny)
                break
        elif c.can_permit:
            permits.extend((c, g) for g in granted)

    if denied is not None:
        if emergency is not None and not named_deny:
            return _break_glass(emergency, request, resource, policy)
        c, p = denied
        return Decision(False, _ref(c, p), c.reference, p.path)
    if not shared:
        assert emergency is not None
        return _break_glass(emergency, request, resource, policy)

    # Rules 6-7 on each permit; the first that passes releases.
    required = resource.labels & kind.required_labels
    shelter = resource.contributor_kind in policy.shelter_kinds
    refusal: Decision | None = None
    for c, p in permits:
        missing = required - p.path_labels
        if missing:
            refusal = refusal or Decision(False, "explicit-label", c.reference, p.path)
            continue
        if shelter and not (
            c.written and c.span_days is not None and c.span_days <= policy.shelter_max_days
        ):
            refusal = refusal or Decision(
                False, "shelter:written-time-limited-consent-required", c.reference, p.path
            )
            continue
        return Decision(
            True, _ref(c, p), c.reference, p.path, _obligations(request, resource, policy)
        )
    if emergency is not None:
        return _break_glass(emergency, request, resource, policy)
    return refusal or Decision(False, "no-permit", None, None)


def _emergency_rule(
    request: AccessRequest, resource: ResourceFacts, policy: Policy, kind: KindRule
) -> EmergencyRule | None:
    """Rule 8: the first emergency rule that may release this resource to this request."""
    if not policy.emergency or not request.purposes:
        return None
    for rule in policy.emergency:
        if (
            request.partner_kind in rule.partner_kinds
            and resource.resource_type in rule.resource_types
            and not rule.purposes.isdisjoint(request.purposes)
            and (resource.labels & kind.required_labels) <= rule.release_labels
            and (rule.release_shelter_data or resource.contributor_kind not in policy.shelter_kinds)
        ):
            return rule
    return None


def _break_glass(
    rule: EmergencyRule, request: AccessRequest, resource: ResourceFacts, policy: Policy
) -> Decision:
    return Decision(
        True,
        f"emergency:{rule.id}",
        None,
        None,
        _obligations(request, resource, policy),
        break_glass=True,
    )


def _obligations(
    request: AccessRequest, resource: ResourceFacts, policy: Policy
) -> tuple[Obligation, ...]:
    out: list[Obligation] = []
    for r in policy.redactions:
        if (
            (r.resource_types is None or resource.resource_type in r.resource_types)
            and (r.partner_kinds is None or request.partner_kind in r.partner_kinds)
            and (r.contributor_kinds is None or resource.contributor_kind in r.contributor_kinds)
            and (r.when_labels is None or not r.when_labels.isdisjoint(resource.labels))
        ):
            out.append(r.obligation)
    return tuple(out)
