"""The demo partner network as tests drive it: an app per partner over one shared store, each
with a fixed requester standing in for its token, and the documents they exchange."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.audit.trail import AuditLog, MemoryAuditLog
from gateway.clock import FrozenClock
from gateway.disclose.deps import Requester, fixed_requester
from gateway.settings import Settings
from gateway.store.port import ResourceStore
from gateway.store.sql import SqlStore

BASE = "http://gateway.test"
FHIR = {"Content-Type": "application/fhir+json"}

ALL = ("system/*.cruds",)
KINDS = {
    "riverside-shelter": "shelter",
    "harbor-clinic": "clinic",
    "northside-legal-aid": "legal-aid",
    "st-marys-hospital": "hospital",
}


def partner_client(
    settings: Settings,
    store: ResourceStore,
    clock: FrozenClock,
    partner_id: str,
    kind: str,
    scopes: tuple[str, ...] = ALL,
    purposes: tuple[str, ...] = ("TREAT",),
    audit: AuditLog | None = None,
) -> TestClient:
    requester = Requester(partner_id, kind, f"Organization/{partner_id}", scopes, purposes)
    if audit is None and not isinstance(store, SqlStore):
        audit = MemoryAuditLog()  # the SQL stores audit to the real chain in their own database
    app = create_app(
        settings,
        store=store,
        clock=clock,
        authenticate=fixed_requester(requester),
        partner_kinds=KINDS,
        audit=audit,
    )
    return TestClient(app, base_url=BASE)


def post(client: TestClient, url: str, resource: dict[str, Any], **headers: str) -> Any:
    return client.post(url, content=orjson.dumps(resource), headers={**FHIR, **headers})


def release_consent(
    patient_id: str,
    *,
    recipient: str = "Organization/harbor-clinic",
    purpose: str = "TREAT",
    start: str = "2026-11-01",
    end: str = "2027-05-01",
) -> dict[str, Any]:
    """A written, time-limited release (VAWA) to one recipient for one purpose."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "64292-6"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-11-20T14:30:00Z",
        "sourceAttachment": {"contentType": "application/pdf", "title": "Signed release",
                             "url": "https://docs.riverside.example/releases/000412.pdf"},
        "provision": {
            "type": "permit",
            "period": {"start": start, "end": end},
            "actor": [{"role": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP"}]}, "reference": {"reference": recipient}}],
            "action": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                "code": "disclose"}]}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                         "code": purpose}],
        },
    }  # fmt: skip
