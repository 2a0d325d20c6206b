"""The demo partner network as tests drive it: an app per partner over one shared store, each
with a fixed requester standing in for its token, and the documents they exchange."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient

from gateway.access.requester import Requester
from gateway.app import create_app
from gateway.audit.trail import AuditLog, MemoryAuditLog
from gateway.clock import FrozenClock
from gateway.disclose.deps import fixed_requester
from gateway.keys import init_keys
from gateway.settings import Settings
from gateway.store.port import ResourceStore
from gateway.store.sql import SqlStore
from tests.conftest import START

BASE = "http://gateway.test"
FHIR = {"Content-Type": "application/fhir+json"}

ALL = ("system/*.cruds",)
KINDS = {
    "riverside-shelter": "shelter",
    "harbor-clinic": "clinic",
    "northside-legal-aid": "legal-aid",
    "st-marys-hospital": "hospital",
}


def gateway_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for an app under test: fresh keys in ``tmp_path``, the test base URL, quiet
    logs (the store is handed to the app, so the database URL is never opened)."""
    keys = tmp_path / "keys"
    init_keys(keys, START)
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/unused.db",
        "keys_dir": keys,
        "base_url": BASE,
        "log_level": "WARNING",
        **overrides,
    }
    return Settings(**values)


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


def reading_requests(
    routes: Iterable[Any], resource_type: str, resource_id: str, *, skip: Iterable[str]
) -> Iterator[tuple[str, str, str, bytes | None, dict[str, str]]]:
    """Every (route, method) of an app, as a request aimed at one record: (method, path
    template, url, body, headers). ``_search`` gets a form naming the record, ``POST /fhir`` a
    batch reading it, and methods in ``skip`` (writes) are left out. For route walks that must
    fail when a route added later reads around consent or audit."""
    for route in routes:
        path = getattr(route, "path", None)
        methods = getattr(route, "methods", None) or set()
        if not isinstance(path, str):
            continue
        url = (
            path.replace("{resource_type}", resource_type)
            .replace("{resource_id}", resource_id)
            .replace("{version_id}", "1")
        )
        for method in sorted(set(methods) - {"HEAD", *skip}):
            body: bytes | None = None
            headers = dict(FHIR)
            if url.endswith("_search"):
                body = f"_id={resource_id}".encode()
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
            elif method == "POST" and url.rstrip("/") == "/fhir":
                reads = [f"{resource_type}/{resource_id}", f"{resource_type}?_count=50"]
                entries = [{"request": {"method": "GET", "url": u}} for u in reads]
                body = orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries})
            elif method in ("POST", "PUT"):
                continue  # other writes carry no request that reads
            yield method, path, url, body, headers
