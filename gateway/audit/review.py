"""Reading the audit log: ``GET /fhir/AuditEvent`` and a survivor's accounting of disclosures
(``GET /fhir/Patient/{id}/$accounting-of-disclosures``), for the ``compliance`` kind only.

Both are themselves audited (the caller adds an Activity naming the events it returned, so
``AuditEvent?patient=X`` also shows who reviewed X's trail). Search parameters are R4
AuditEvent's: ``patient``, ``agent``, ``altid``, ``entity``, ``type``, ``subtype``,
``outcome``, ``action``, ``date`` (prefixes ``eq ge gt le lt``), with ``_count`` and keyset
paging (``_cursor``), newest first. Parsing is strict: anything else is a 400 naming it.

The accounting (45 CFR 164.528) lists each disclosure of the survivor's data **to another
partner**: when, to whom (the recipient Organization, its name and address from the
directory), what (the records, by type and reference) and why (purpose of use). It leaves out
what the rule leaves out: a partner reading back its own records, writes, and the compliance
office's own reviews. Each entry is an AuditEvent trimmed to that content (no client ids, no
network addresses).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from gateway.audit.chain import AuditPage, AuditQuery
from gateway.audit.events import Disclosed
from gateway.errors import BadRequest, Forbidden, Issue, UnknownParameter
from gateway.store.query import FORBIDDEN_CHARS
from gateway.store.records import fhir_instant
from gateway.vocabulary.dates import parse_date_range
from gateway.vocabulary.references import reference_value

REVIEWERS = frozenset({"compliance"})
REVIEW_RULE = "policy:compliance-review"
REFERENCE_PARAMS = {"patient": "Patient", "agent": "Organization", "entity": None}
TOKEN_PARAMS = frozenset({"altid", "type", "subtype", "outcome", "action"})
IGNORED = frozenset({"_format", "_pretty"})
# What is not a disclosure to another partner (164.528 leaves these out of the accounting).
NOT_DISCLOSED = frozenset({"contributor", REVIEW_RULE})
DISCLOSING_ACTIONS = frozenset({"R", "E"})


def require_reviewer(kind: str, scopes_allow_audit: bool) -> None:
    if kind not in REVIEWERS or not scopes_allow_audit:
        raise Forbidden("the audit log is for the compliance office")


def parse_audit_query(
    params: Sequence[tuple[str, str]], *, default_count: int, max_count: int
) -> AuditQuery:
    criteria: list[tuple[str, tuple[str, ...]]] = []
    low: str | None = None
    high: str | None = None
    count, before = default_count, None
    if len(params) > MAX_AUDIT_PARAMS:
        raise BadRequest(f"an AuditEvent search takes at most {MAX_AUDIT_PARAMS} parameters")
    for name, value in params:
        if FORBIDDEN_CHARS.search(name) or FORBIDDEN_CHARS.search(value) or len(value) > 2048:
            raise BadRequest("a search parameter carries a control character or is too long")
        if name in IGNORED:
            continue
        if name == "_count":
            if not _digits(value, 9):
                raise BadRequest("_count must be a non-negative integer")
            count = max(1, min(int(value), max_count))
        elif name == "_cursor":
            if not _digits(value, 18):
                raise BadRequest("_cursor is not a valid paging token")
            before = int(value)
        elif name == "date":
            low, high = _date_bound(value, low, high)
        elif name in REFERENCE_PARAMS:
            criteria.append((name, tuple(_reference(name, v) for v in _split(name, value))))
        elif name in TOKEN_PARAMS:
            criteria.append((name, tuple(v.rpartition("|")[2] for v in _split(name, value))))
        else:
            raise UnknownParameter(
                f"unknown search parameter {name!r} for AuditEvent",
                issues=[
                    Issue("not-supported", f"unknown search parameter {name!r}", expression=(name,))
                ],
            )
    return AuditQuery(tuple(criteria), low, high, count, before)


MAX_AUDIT_PARAMS = 20  # each criterion is one more index lookup: a review needs a handful


def _digits(value: str, most: int) -> bool:
    """ASCII digits only (``"²".isdigit()`` is true), and few enough for a 64-bit integer."""
    return value.isascii() and value.isdigit() and len(value) <= most


def _split(name: str, value: str) -> list[str]:
    values = [v for v in value.split(",") if v]
    if not values:
        raise BadRequest(f"search parameter {name} has no value")
    return values


def _reference(name: str, value: str) -> str:
    """``Type/id`` (``entity`` also ``Type/id/_history/v``) of a reference value; a bare id is
    of the parameter's default type."""
    ref = reference_value(value, REFERENCE_PARAMS[name])
    if ref is None or not ref.resource_type or (ref.version is not None and name != "entity"):
        raise BadRequest(f"{name} must be a reference Type/id")
    if ref.version is not None:
        return f"{ref}/_history/{ref.version}"
    return str(ref)


def _date_bound(value: str, low: str | None, high: str | None) -> tuple[str | None, str | None]:
    prefix, body = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    try:
        start, end = parse_date_range(body)
    except BadRequest as exc:
        raise BadRequest(
            "date is not a valid FHIR date",
            issues=[Issue("invalid", "date is not a valid FHIR date", expression=("date",))],
        ) from exc
    if prefix in ("ge", "gt", "eq"):
        bound = end if prefix == "gt" else start
        low = bound if low is None else max(low, bound)
    if prefix in ("le", "lt", "eq"):
        bound = start if prefix == "lt" else end
        high = bound if high is None else min(high, bound)
    if prefix not in ("eq", "ge", "gt", "le", "lt"):
        raise UnknownParameter(f"date prefix {prefix!r} is not supported on AuditEvent")
    return low, high


def _patient_of(event: dict[str, Any]) -> str | None:
    for e in event.get("entity") or ():
        if (e.get("role") or {}).get("code") == "1":
            ref = (e.get("what") or {}).get("reference", "")
            return ref.split("/", 1)[1] if "/" in ref else None
    return None


def reviewed(page: AuditPage) -> tuple[Disclosed, ...]:
    """What a review discloses, for its own audit event: each event, by its patient."""
    return tuple(
        Disclosed("AuditEvent", str(seq), 1, _patient_of(event), REVIEW_RULE)
        for seq, event in page.events
    )


def searchset(
    page: AuditPage, *, base: str, echo: Iterable[tuple[str, str]], now: datetime
) -> dict[str, Any]:
    kept = [(n, v) for n, v in echo if n != "_cursor"]
    self_url = f"{base}/AuditEvent" + (f"?{urlencode(kept)}" if kept else "")
    links = [{"relation": "self", "url": self_url}]
    if page.next_before is not None:
        nxt = urlencode([*kept, ("_cursor", str(page.next_before))])
        links.append({"relation": "next", "url": f"{base}/AuditEvent?{nxt}"})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "meta": {"lastUpdated": fhir_instant(now)},
        "total": page.total,
        "link": links,
    }
    if page.events:
        bundle["entry"] = [
            {
                "fullUrl": f"{base}/AuditEvent/{seq}",
                "resource": {**event, "id": str(seq)},
                "search": {"mode": "match"},
            }
            for seq, event in page.events
        ]
    return bundle


def accounting_query(patient_id: str, params: Sequence[tuple[str, str]]) -> AuditQuery:
    """The events of this patient's successful disclosures, ``_since``/``_until`` bounded."""
    low = high = None
    for name, value in params:
        if name in IGNORED:
            continue
        if name not in ("_since", "_until"):
            raise UnknownParameter(f"parameter {name!r} is not supported here")
        try:
            start, end = parse_date_range(value)
        except BadRequest as exc:
            raise BadRequest(f"{name} is not a valid FHIR date or instant") from exc
        if name == "_since":
            low = start
        else:
            high = end
    criteria = (("patient", (f"Patient/{patient_id}",)), ("outcome", ("0",)))
    return AuditQuery(criteria, low, high, count=MAX_ACCOUNTED)


MAX_ACCOUNTED = 10_000  # six years of one survivor's disclosures fit; more would be paged


def accounting(
    page: AuditPage,
    *,
    patient_id: str,
    base: str,
    now: datetime,
    recipients: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The accounting Bundle: the disclosures, oldest first, then the recipients' directory
    entries (name and address)."""
    entries: list[dict[str, Any]] = []
    seen_recipients: dict[str, None] = {}
    for seq, event in sorted(page.events):
        disclosed = [
            e
            for e in event.get("entity") or ()
            # released under a decision (an operation's target is not a disclosure)
            if (e.get("role") or {}).get("code") == "4"
            and _decision(e)
            and _decision(e) not in NOT_DISCLOSED
        ]
        if event.get("action") not in DISCLOSING_ACTIONS or not disclosed:
            continue
        requestor: dict[str, Any] = next(
            (a for a in event.get("agent") or () if a.get("requestor")), {}
        )
        recipient = (requestor.get("who") or {}).get("reference")
        if recipient:
            seen_recipients[recipient] = None
        kept_keys = ("type", "who", "requestor", "purposeOfUse")
        agent = {k: requestor[k] for k in kept_keys if k in requestor}
        entries.append(
            {
                "fullUrl": f"{base}/AuditEvent/{seq}",
                "resource": {
                    "resourceType": "AuditEvent",
                    "id": str(seq),
                    "type": event["type"],
                    "subtype": event.get("subtype", []),
                    "action": event.get("action"),
                    "recorded": event["recorded"],
                    "outcome": "0",
                    "purposeOfEvent": event.get("purposeOfEvent", []),
                    "agent": [agent],
                    "source": event["source"],
                    "entity": [
                        {"what": {"reference": f"Patient/{patient_id}"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                                  "code": "1", "display": "Patient"}},
                        *({"what": {"reference": e["what"]["reference"].split("/_history/")[0]},
                           "role": e["role"]} for e in disclosed),
                    ],
                },
            }
        )  # fmt: skip
    for reference in seen_recipients:
        org = recipients.get(reference)
        if org is not None:
            entries.append({"fullUrl": f"{base}/{reference}", "resource": org})
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "meta": {"lastUpdated": fhir_instant(now)},
        "timestamp": fhir_instant(now),
        "entry": entries,
    }


def _decision(entity: dict[str, Any]) -> str:
    for detail in entity.get("detail") or ():
        if detail.get("type") == "decision":
            return str(detail.get("valueString"))
    return ""


__all__ = [
    "REVIEW_RULE",
    "accounting",
    "accounting_query",
    "parse_audit_query",
    "require_reviewer",
    "reviewed",
    "searchset",
]
