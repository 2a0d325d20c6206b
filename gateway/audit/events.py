"""AuditEvents in the IHE Basic Audit Log Patterns (BALP) shape, built from what a request did.

Pure: an ``Activity`` (one interaction: what was disclosed, or why it was refused) and the
``Requester`` go in, R4 AuditEvent dicts come out, **one per patient** whose data the activity
touched (BALP's patient-privacy rule: a search returning three patients' records writes three
events, so "who saw this patient's data" is one query). Records that belong to no patient
(directory entries) share one event without a Patient entity.

Events hold references and codes only, never clinical content: the Patient (role 1), each
resource disclosed with its version (role 4), the search query (role 24; the query string the
partner sent, base64 as BALP has it), the rule and Consent that allowed each release, the
redactions applied, break-glass. Every element below is R4 AuditEvent.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.store.records import fhir_instant

EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
GATEWAY_SUBTYPES = "urn:care-gateway:audit-subtype"  # break-glass, consent-revoke, refusal kinds
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
PURPOSE = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
CLIENT_ID = "urn:ietf:params:oauth:client-id"

SUCCESS, REFUSED = "0", "4"
ACTIONS = {
    "create": "C", "read": "R", "vread": "R", "history-instance": "R", "search-type": "E",
    "update": "U", "delete": "D", "operation": "E", "batch": "E", "transaction": "E",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Disclosed:
    """One version of one resource that left the gateway (or was written), and why."""

    resource_type: str
    id: str
    version: int
    patient_id: str | None
    rule: str  # contributor | policy:directory | consent:Consent/x#provision | emergency:…
    consent: str | None = None  # "Consent/<id>"
    redactions: tuple[str, ...] = ()  # obligation rule ids applied
    break_glass: bool = False
    included: bool = False  # pulled in by _include/_revinclude


@dataclass(frozen=True, slots=True)
class Activity:
    interaction: str  # FHIR restful-interaction code (read, search-type, create, ...)
    resource_type: str | None
    outcome: str = SUCCESS
    disclosed: tuple[Disclosed, ...] = ()
    query: str | None = None  # the search's query string, as sent
    refusal: str | None = None  # why (a rule or "scope", "token"), for outcome 4
    target: str | None = None  # "Type/id" refused (or operated on, e.g. $explain)
    target_patient: str | None = None
    subtypes: tuple[str, ...] = ()  # e.g. consent-revoke


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asked: the partner (client id, Organization, kind), why, and from where."""

    partner_id: str | None
    organization: str | None
    purposes: tuple[str, ...] = ()
    address: str | None = None
    names: dict[str, str] = field(default_factory=dict, compare=False)
    display: str = "unauthenticated client"  # who, when there is no partner Organization


def audit_events(
    activity: Activity, actor: Actor, recorded: datetime, *, source: str
) -> list[dict[str, Any]]:
    """The AuditEvents for one activity: one per patient (plus one for patient-less records)."""
    patients: dict[str | None, list[Disclosed]] = {}
    for d in activity.disclosed:
        patients.setdefault(d.patient_id, []).append(d)
    if not patients:
        # A refusal, an operation on one record, or a search that found nothing: one event
        # (the query is still audited), about the target's patient when there is one.
        patients[activity.target_patient] = []
    return [
        _event(activity, actor, recorded, source, patient_id, disclosed)
        for patient_id, disclosed in patients.items()
    ]


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _event(
    activity: Activity,
    actor: Actor,
    recorded: datetime,
    source: str,
    patient_id: str | None,
    disclosed: Sequence[Disclosed],
) -> dict[str, Any]:
    subtypes = [_coding(INTERACTION, activity.interaction)]
    extra = list(activity.subtypes)
    if any(d.break_glass for d in disclosed):
        extra.append("break-glass")
    if activity.outcome != SUCCESS and activity.refusal:
        extra.append(f"refused:{activity.refusal.split(':', 1)[0]}")
    subtypes += [_coding(GATEWAY_SUBTYPES, code) for code in dict.fromkeys(extra)]
    requestor: dict[str, Any] = {
        "type": {"coding": [_coding(PARTICIPATION, "IRCP", "information recipient")]},
        "requestor": True,
    }
    if actor.organization:
        requestor["who"] = {"reference": actor.organization}
        name = actor.names.get(actor.partner_id or "")
        if name:
            requestor["who"]["display"] = name
    else:
        requestor["who"] = {"display": actor.display}
    if actor.partner_id:
        requestor["altId"] = actor.partner_id
    if actor.purposes:
        requestor["purposeOfUse"] = [{"coding": [_coding(PURPOSE, p)]} for p in actor.purposes]
    consents = sorted({d.consent for d in disclosed if d.consent})
    if consents:
        requestor["policy"] = [f"{source}/Consent/{c.split('/', 1)[1]}" for c in consents]
    client: dict[str, Any] = {
        "type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
        "who": {"identifier": {"system": CLIENT_ID, "value": actor.partner_id or "unknown"}},
        "requestor": False,
    }
    if actor.address:
        client["network"] = {"address": actor.address, "type": "2"}
    server = {
        "type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
        "who": {"display": "care-gateway", "identifier": {"value": source}},
        "requestor": False,
    }
    entities: list[dict[str, Any]] = []
    if patient_id:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient_id}"},
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    for d in disclosed:
        details = [{"type": "decision", "valueString": d.rule}]
        if d.redactions:
            details.append({"type": "redactions", "valueString": ",".join(d.redactions)})
        if d.break_glass:
            details.append({"type": "break-glass", "valueString": "true"})
        if d.included:
            details.append({"type": "search-mode", "valueString": "include"})
        entities.append(
            {
                "what": {"reference": f"{d.resource_type}/{d.id}/_history/{d.version}"},
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
                "detail": details,
            }
        )
    if activity.target:
        entities.append(
            {
                "what": {"reference": activity.target},
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
            }
        )
    if activity.query is not None:
        query = {
            "type": _coding(ENTITY_TYPE, "2", "System Object"),
            "role": _coding(OBJECT_ROLE, "24", "Query"),
            "query": base64.b64encode(activity.query.encode()).decode(),
        }
        if activity.resource_type:
            query["description"] = activity.resource_type
        entities.append(query)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": _coding(EVENT_TYPE, "rest", "Restful Operation"),
        "subtype": subtypes,
        "action": ACTIONS.get(activity.interaction, "E"),
        "recorded": fhir_instant(recorded),
        "outcome": activity.outcome,
        "agent": [requestor, client, server],
        "source": {
            "site": source,
            "observer": {"display": "care-gateway"},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
    }
    if activity.outcome != SUCCESS and activity.refusal:
        event["outcomeDesc"] = activity.refusal  # a rule name, never data
    if actor.purposes:
        event["purposeOfEvent"] = [{"coding": [_coding(PURPOSE, p)]} for p in actor.purposes]
    if entities:
        event["entity"] = entities
    return event


AGGREGATED = "urn:care-gateway:audit:aggregated-refusals"


def aggregated_refusals(
    *, source_address: str, reason: str, minute: str, count: int, recorded: datetime, site: str
) -> dict[str, Any]:
    """One event for every refusal without a valid token from one source, for one reason, in
    one minute (``minute``: ``YYYY-MM-DDTHH:MM``, UTC): how many, from where, why."""
    activity = Activity(
        "operation", None, outcome=REFUSED, refusal=reason, subtypes=("unauthenticated",)
    )
    actor = Actor(None, None, address=source_address or None)
    (event,) = audit_events(activity, actor, recorded, source=site)
    event["extension"] = [
        {
            "url": AGGREGATED,
            "extension": [
                {"url": "count", "valueInteger": count},
                {
                    "url": "period",
                    "valuePeriod": {"start": f"{minute}:00Z", "end": f"{minute}:59.999Z"},
                },
            ],
        }
    ]
    return event
