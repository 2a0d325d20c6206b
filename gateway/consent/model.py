"""R4 Consent resources parsed once into provision trees that ``engine.decide`` walks fast.

``parse_consent`` never raises on a dict: odd but valid R4 (missing elements, unknown codes,
absolute references, contained references) and even invalid shapes are parsed **fail-closed**:
whatever the parser cannot understand makes a *permit* narrower (it applies to less, or to
nothing) and a *deny* wider (it applies to more). The rules themselves (DESIGN.md section 3,
"Consent semantics") are written out in ``gateway.consent.engine``.

Everything the engine compares is precomputed here: frozensets of codes, periods as the
fixed-width UTC stamps of ``gateway.vocabulary.dates.stamp``, and for every provision what its
path through the tree contributes (is any actor named on the way down, which security labels
are listed on the way down). ``decide`` never re-parses a Consent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from gateway.errors import BadRequest
from gateway.vocabulary.codesystems import canonical_system
from gateway.vocabulary.dates import parse_date_range, stamp
from gateway.vocabulary.references import reference_of

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
PURPOSE_SYSTEMS = frozenset(
    {
        None,
        "http://terminology.hl7.org/CodeSystem/v3-ActReason",
        "http://terminology.hl7.org/CodeSystem/v3-PurposeOfUse",
    }
)
DISCLOSURE_ACTIONS = frozenset({"access", "disclose"})
DATA_MEANINGS = frozenset({"instance", "related", "dependents", "authoredby"})

EARLIEST = stamp(datetime.min.replace(tzinfo=UTC))
LATEST = stamp(datetime.max.replace(tzinfo=UTC))


class Unreadable(Exception):
    """An element is present but cannot be understood (internal to parsing)."""


@dataclass(frozen=True, slots=True)
class ParsedProvision:
    """One node of a Consent's provision tree, ready to match.

    An element that the provision does not give is ``None`` (it matches everything). ``never``
    marks a provision that can apply to no disclosure at all (a permit with an element the
    parser could not understand, a permit with no actor on its path, an ``action`` without
    access or disclose).
    """

    deny: bool
    path: str  # "provision", "provision.provision[0]", ...
    never: bool
    period: tuple[datetime, datetime] | None  # nested only (the root's is the Consent's); UTC
    actors: frozenset[str] | None  # "Organization/x" ...
    actor_wild: bool  # a deny with an actor we cannot resolve: applies to every requester
    purposes: frozenset[str] | None
    classes: frozenset[str] | None
    codes: frozenset[tuple[str | None, str]] | None
    bare_codes: frozenset[str]  # deny only: codes given without a system match on code alone
    labels: frozenset[str] | None
    data_period: tuple[str, str] | None
    data: tuple[tuple[str, str], ...] | None  # (meaning, "Type/id")
    data_wild: bool  # deny only: a data item we cannot resolve matches every resource
    children: tuple[ParsedProvision, ...]
    # What the path from the root down to this provision (inclusive) contributes:
    path_labels: frozenset[str]  # security labels listed by it or an ancestor
    names_actor: bool  # it or an ancestor names an actor

    @property
    def type(self) -> str:
        return "deny" if self.deny else "permit"


@dataclass(frozen=True, slots=True)
class ParsedConsent:
    """A Consent reduced to what the engine needs.

    ``counts`` is the part of "a Consent counts" that does not depend on the clock (status
    active, scope patient-privacy, a patient); ``period`` is the root ``provision.period``,
    checked against ``now`` at decision time. ``can_permit`` is False when something that could
    change its meaning was not understood (a modifierExtension, an unreadable root period): such
    a Consent may still deny, never permit.
    """

    reference: str  # "Consent/<id>"
    patient_id: str | None
    # The partner that recorded it: a Consent is its recorder's release (or refusal) of the
    # recorder's own records, and governs nothing another partner contributed.
    recorder: str | None
    # The patient could not be read (an identifier-only or foreign reference): such a Consent
    # may still deny, as widely as it could (every patient of its recorder), never permit.
    any_patient: bool
    status: str | None
    counts: bool
    can_permit: bool
    period: tuple[datetime, datetime] | None  # aware UTC, compared with ``now``
    written: bool  # sourceAttachment or sourceReference
    span_days: float | None  # root period end minus start, when both are given
    root: ParsedProvision | None


def parse_period(value: Any) -> tuple[str, str] | None:
    """(low, high) stamps of an R4 Period; None when absent. Raises Unreadable when unreadable."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Unreadable
    start, end = value.get("start"), value.get("end")
    if start is None and end is None:
        return None
    if not isinstance(start, str | None) or not isinstance(end, str | None):
        raise Unreadable
    try:
        low = parse_date_range(start)[0] if start is not None else EARLIEST
        high = parse_date_range(end)[1] if end is not None else LATEST
    except (BadRequest, ValueError, OverflowError) as exc:
        raise Unreadable from exc
    return low, high


def _moments(span: tuple[str, str] | None) -> tuple[datetime, datetime] | None:
    """Stamps as aware UTC datetimes, so that ``decide`` compares ``now`` without formatting."""
    if span is None:
        return None
    low, high = (datetime.fromisoformat(x).replace(tzinfo=UTC) for x in span)
    return low, high


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _codings(concept: Any) -> list[dict[str, Any]]:
    """The Codings of a CodeableConcept (or of a bare Coding)."""
    if not isinstance(concept, dict):
        return []
    if "coding" in concept:
        return [c for c in _as_list(concept.get("coding")) if isinstance(c, dict)]
    return [concept] if "code" in concept else []


def _code(coding: dict[str, Any]) -> str | None:
    code = coding.get("code")
    return code if isinstance(code, str) and code else None


def _system(coding: dict[str, Any]) -> str | None:
    system = coding.get("system")
    return system if isinstance(system, str) and system else None


# ---------------------------------------------------------------------------------------------


def parse_consent(resource: dict[str, Any], *, recorder: str | None = None) -> ParsedConsent:
    """Parse an R4 Consent dict once (``recorder``: the partner that contributed it); never
    raises on a dict (anything odd is fail-closed)."""
    rid = resource.get("id")
    reference = f"Consent/{rid}" if isinstance(rid, str) else "Consent/?"
    status = resource.get("status") if isinstance(resource.get("status"), str) else None
    scope_ok = any(
        _system(c) == CONSENT_SCOPE and _code(c) == "patient-privacy"
        for c in _codings(resource.get("scope"))
    )
    patient_ref = reference_of(resource.get("patient"))
    patient_id = (
        patient_ref.split("/", 1)[1] if patient_ref and patient_ref[:8] == "Patient/" else None
    )
    # A patient that cannot be read: a deny is never dropped (it applies to every patient of
    # its recorder); nothing is permitted.
    any_patient = patient_id is None
    can_permit = not resource.get("modifierExtension") and not any_patient
    provision = resource.get("provision")
    period: tuple[datetime, datetime] | None = None
    span_days: float | None = None
    root: ParsedProvision | None = None
    if isinstance(provision, dict):
        try:
            period = _moments(parse_period(provision.get("period")))
        except Unreadable:
            can_permit = False  # its denies still count, whatever the period meant
        if period is not None:
            span_days = _span_days(provision.get("period"))
        root = _parse_provision(provision, "provision", None, is_root=True)
    elif provision is not None:
        can_permit = False
    attachment = resource.get("sourceAttachment")
    source_ref = resource.get("sourceReference")
    written = (
        isinstance(attachment, dict) and any(attachment.get(k) for k in ("data", "url", "hash"))
    ) or (isinstance(source_ref, dict) and bool(source_ref.get("reference")))
    return ParsedConsent(
        reference=reference,
        patient_id=patient_id,
        recorder=recorder,
        any_patient=any_patient,
        status=status,
        counts=status == "active" and scope_ok,
        can_permit=can_permit,
        period=period,
        written=written,
        span_days=span_days,
        root=root,
    )


def _span_days(period: Any) -> float | None:
    """Days from the earliest instant of the start to the **latest** instant of the end (a
    period ending "2027" runs to 2027-12-31T23:59:59.999999, for the time limit as for validity;
    one ending "2027-05-31" to the last instant of that day)."""
    if not isinstance(period, dict):
        return None
    start, end = period.get("start"), period.get("end")
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    try:
        low = datetime.fromisoformat(parse_date_range(start)[0])
        high = datetime.fromisoformat(parse_date_range(end)[1])
    except (BadRequest, ValueError, OverflowError):
        return None
    return (high - low).total_seconds() / 86400


def _parse_provision(
    node: dict[str, Any], path: str, parent: ParsedProvision | None, *, is_root: bool
) -> ParsedProvision:
    raw_type = node.get("type")
    # A provision without a (readable) type is read as a deny: fail closed.
    deny = raw_type != "permit"
    never = bool(node.get("modifierExtension")) and not deny

    # period (the root's is the Consent's, checked in decide)
    period: tuple[datetime, datetime] | None = None
    if not is_root:
        try:
            period = _moments(parse_period(node.get("period")))
        except Unreadable:
            never = never or not deny  # an unreadable period: a permit never, a deny always

    # actor
    actors: frozenset[str] | None = None
    actor_wild = False
    raw_actors = _as_list(node.get("actor"))
    if raw_actors:
        refs = [
            reference_of(a.get("reference")) if isinstance(a, dict) else None for a in raw_actors
        ]
        actors = frozenset(r for r in refs if r)
        actor_wild = deny and any(r is None for r in refs)
    names_actor = bool(raw_actors) or (parent is not None and parent.names_actor)
    if not deny and not names_actor:
        never = True  # a permit without any actor in itself or its ancestors releases to nobody

    # action: request-independent, so decided here
    raw_actions = _as_list(node.get("action"))
    if raw_actions:
        codings = [c for a in raw_actions for c in _codings(a)]
        if deny:
            ok = any(_code(c) in DISCLOSURE_ACTIONS for c in codings)
        else:
            ok = any(
                _system(c) == CONSENT_ACTION and _code(c) in DISCLOSURE_ACTIONS for c in codings
            )
        never = never or not ok

    # purpose
    purposes: frozenset[str] | None = None
    raw_purposes = [p for p in _as_list(node.get("purpose")) if isinstance(p, dict)]
    if node.get("purpose") is not None:
        purposes = frozenset(
            c
            for p in raw_purposes
            if (c := _code(p)) is not None and (deny or _system(p) in PURPOSE_SYSTEMS)
        )

    # class
    classes: frozenset[str] | None = None
    if node.get("class") is not None:
        classes = frozenset(
            c
            for k in _as_list(node.get("class"))
            if isinstance(k, dict)
            and (c := _code(k)) is not None
            and (deny or _system(k) == RESOURCE_TYPES_SYSTEM)
        )

    # code
    codes: frozenset[tuple[str | None, str]] | None = None
    bare_codes: frozenset[str] = frozenset()
    if node.get("code") is not None:
        pairs = [
            (canonical_system(_system(c)), code)  # as the resource's codes: canonical systems
            for concept in _as_list(node.get("code"))
            for c in _codings(concept)
            if (code := _code(c)) is not None
        ]
        codes = frozenset(pairs)
        if deny:
            bare_codes = frozenset(code for system, code in pairs if system is None)

    # securityLabel: the resource must carry all of them
    labels: frozenset[str] | None = None
    if node.get("securityLabel") is not None:
        raw_labels = [c for c in _as_list(node.get("securityLabel")) if isinstance(c, dict)]
        listed = [_code(c) for c in raw_labels]
        labels = frozenset(c for c in listed if c is not None)
        if not deny and (len(labels) != len(set(listed)) or not raw_labels):
            never = True  # a label we cannot read: the permit cannot be checked

    # dataPeriod
    data_period: tuple[str, str] | None = None
    try:
        data_period = parse_period(node.get("dataPeriod"))
    except Unreadable:
        never = never or not deny

    # data
    data: tuple[tuple[str, str], ...] | None = None
    data_wild = False
    if node.get("data") is not None:
        items: list[tuple[str, str]] = []
        for item in _as_list(node.get("data")):
            meaning = item.get("meaning") if isinstance(item, dict) else None
            ref = reference_of(item.get("reference")) if isinstance(item, dict) else None
            if meaning in DATA_MEANINGS and ref is not None:
                items.append((meaning, ref))
            elif deny:
                data_wild = True
        data = tuple(items)

    path_labels = (parent.path_labels if parent else frozenset()) | (labels or frozenset())
    shell = ParsedProvision(
        deny=deny,
        path=path,
        never=never,
        period=period,
        actors=actors,
        actor_wild=actor_wild,
        purposes=purposes,
        classes=classes,
        codes=codes,
        bare_codes=bare_codes,
        labels=labels,
        data_period=data_period,
        data=data,
        data_wild=data_wild,
        children=(),
        path_labels=path_labels,
        names_actor=names_actor,
    )
    children = tuple(
        _parse_provision(child, f"{path}.provision[{i}]", shell, is_root=False)
        for i, child in enumerate(_as_list(node.get("provision")))
        if isinstance(child, dict)
    )
    if not children:
        return shell
    return replace(shell, children=children)
