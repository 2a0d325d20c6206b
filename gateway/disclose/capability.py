"""The CapabilityStatement at ``/fhir/metadata``, generated from what is actually wired: the
routes the app has and the search parameter table the store indexes. Nothing is claimed by hand."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from starlette.routing import BaseRoute

from gateway import __version__
from gateway.settings import Settings
from gateway.store.records import fhir_instant
from gateway.vocabulary.registry import COMMON, PARAMS, RESOURCE_TYPES

# Route (method, path template) -> FHIR interaction code, instance/type level.
TYPE_INTERACTIONS = {
    ("GET", "/fhir/{resource_type}/{resource_id}"): "read",
    ("GET", "/fhir/{resource_type}/{resource_id}/_history/{version_id}"): "vread",
    ("PUT", "/fhir/{resource_type}/{resource_id}"): "update",
    ("DELETE", "/fhir/{resource_type}/{resource_id}"): "delete",
    ("GET", "/fhir/{resource_type}/{resource_id}/_history"): "history-instance",
    ("POST", "/fhir/{resource_type}"): "create",
    ("GET", "/fhir/{resource_type}"): "search-type",
}
SYSTEM_INTERACTIONS = {("POST", "/fhir"): ("transaction", "batch")}
OPERATIONS = {
    ("GET", "/fhir/Consent/$explain"): ("Consent", "explain"),
    ("GET", "/fhir/Patient/{resource_id}/$accounting-of-disclosures"): (
        "Patient",
        "accounting-of-disclosures",
    ),
}
AUDIT_SEARCH = ("GET", "/fhir/AuditEvent")
AUDIT_PARAMS = (
    ("patient", "reference", "The survivor whose data the event is about"),
    ("agent", "reference", "The partner Organization that asked"),
    ("altid", "token", "The partner's client id"),
    ("entity", "reference", "A record the event names (with or without its version)"),
    ("type", "token", "Event type (rest)"),
    ("subtype", "token", "Interaction, or break-glass, consent-revoke, refused:…"),
    ("outcome", "token", "0 disclosed, 4 refused"),
    ("action", "token", "C R U D E"),
    ("date", "date", "When the event was recorded"),
)
COMMON_SEARCH = (
    ("_id", "token", "Logical id of the resource"),
    ("_lastUpdated", "date", "When the resource version last changed"),
)

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def wired(routes: Iterable[BaseRoute]) -> set[tuple[str, str]]:
    out = set()
    for route in routes:
        path = getattr(route, "path", None)
        for method in getattr(route, "methods", None) or ():
            if isinstance(path, str):
                out.add((str(method), path))
    return out


def capability_statement(settings: Settings, now: datetime, routes: Iterable[BaseRoute]) -> bytes:
    present = wired(routes)
    interactions = [{"code": code} for key, code in TYPE_INTERACTIONS.items() if key in present]
    resources: list[dict[str, Any]] = []
    for resource_type in RESOURCE_TYPES:
        params = [{"name": n, "type": t, "documentation": d} for n, t, d in COMMON_SEARCH]
        params += [
            {"name": p.name, "type": p.kind.value, "documentation": p.description or p.name}
            for p in (*PARAMS[resource_type], *COMMON)
        ]
        includes = [
            f"{resource_type}:{p.name}"
            for p in PARAMS[resource_type]
            if p.kind.value == "reference"
        ]
        revincludes = [
            f"{source}:{p.name}"
            for source in RESOURCE_TYPES
            for p in PARAMS[source]
            if p.kind.value == "reference" and (not p.targets or resource_type in p.targets)
        ]
        operations = [
            {"name": name, "definition": f"{settings.fhir_base}/OperationDefinition/{name}"}
            for (method, path), (op_type, name) in OPERATIONS.items()
            if op_type == resource_type and (method, path) in present
        ]
        resources.append(
            {
                "type": resource_type,
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": False,
                "conditionalCreate": True,
                "conditionalUpdate": False,
                "conditionalDelete": "not-supported",
                "interaction": interactions,
                "searchInclude": includes,
                "searchRevInclude": revincludes,
                "searchParam": params,
                **({"operation": operations} if operations else {}),
            }
        )
    if AUDIT_SEARCH in present:
        resources.append(
            {
                "type": "AuditEvent",
                "documentation": "The audit log, for the compliance office only; read-only.",
                "interaction": [{"code": "search-type"}],
                "searchParam": [
                    {"name": n, "type": t, "documentation": d} for n, t, d in AUDIT_PARAMS
                ],
            }
        )
    system = [
        {"code": code}
        for key, codes in SYSTEM_INTERACTIONS.items()
        if key in present
        for code in codes
    ]
    doc = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": fhir_instant(now),
        "kind": "instance",
        "software": {"name": "care-gateway", "version": __version__},
        "implementation": {
            "description": "Consent-scoped care-coordination gateway",
            "url": settings.fhir_base,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": OAUTH_URIS,
                            "extension": [
                                {"url": "token", "valueUri": f"{settings.base_url}/auth/token"}
                            ],
                        }
                    ],
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": SECURITY_SERVICE,
                                    "code": "SMART-on-FHIR",
                                    "display": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "Every request needs a bearer token (SMART Backend Services).",
                },
                "resource": resources,
                "interaction": system,
            }
        ],
    }
    return orjson.dumps(doc)
