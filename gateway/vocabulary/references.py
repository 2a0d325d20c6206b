"""FHIR references, read one way by every layer (the store's index, the consent engine, the
label tables, the write path).

A reference is *local* (a record of this gateway) only when it is relative: ``Type/id``, with
an optional ``/_history/<version>``, ``Type`` a resource type name and ``id`` a FHIR id. The
write path rewrites absolute references to this gateway's own base into that form
(``localise``), so that after a write every absolute URL names another server: such a reference
never counts as a record here (a Consent naming ``https://elsewhere.example/fhir/Patient/1`` is
not about a survivor of this network, and a provision naming it as actor names nobody here).
``urn:uuid:``/``urn:oid:`` and ``#contained`` references are not local either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TYPE_PATTERN = re.compile(r"[A-Z][A-Za-z]{0,63}")
_VERSION = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True, slots=True)
class LocalReference:
    resource_type: str
    id: str
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.id}"


def parse_local(text: Any) -> LocalReference | None:
    """The local record a reference string names; None for anything else (absolute URLs,
    ``urn:``, ``#fragment``, malformed strings)."""
    if not isinstance(text, str) or not text or len(text) > 200:
        return None
    parts = text.split("/")
    version = None
    if len(parts) == 4 and parts[2] == "_history" and _VERSION.fullmatch(parts[3]):
        version = parts[3]
        parts = parts[:2]
    if len(parts) != 2:
        return None
    resource_type, resource_id = parts
    if not TYPE_PATTERN.fullmatch(resource_type) or not ID_PATTERN.fullmatch(resource_id):
        return None
    return LocalReference(resource_type, resource_id, version)


def local_reference(text: Any) -> str | None:
    """``Type/id`` of a local reference string (version dropped); None otherwise."""
    ref = parse_local(text)
    return None if ref is None else f"{ref.resource_type}/{ref.id}"


def reference_of(value: Any) -> str | None:
    """``Type/id`` that a Reference element (a dict with ``reference``) names locally."""
    return local_reference(value.get("reference")) if isinstance(value, dict) else None


def localise(node: Any, base: str) -> Any:
    """A copy of ``node`` in which every ``reference`` that starts with this gateway's own FHIR
    base (``https://host/fhir/``) is made relative; everything else unchanged."""
    prefix = base.rstrip("/") + "/"
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value.startswith(prefix):
                out[key] = value[len(prefix) :]
            else:
                out[key] = localise(value, base)
        return out
    if isinstance(node, list):
        return [localise(v, base) for v in node]
    return node


def reference_value(text: str, default_type: str | None = None) -> LocalReference | None:
    """The record a *search value* names: ``id`` (of ``default_type``, or of no stated type),
    ``Type/id``, either with ``/_history/<version>``, or an absolute URL ending so (a client may
    search with the full URL of a record). None when what it names is not a FHIR type and id:
    such a value could match nothing the gateway holds. Unlike ``parse_local`` (a stored
    reference), the type may be left to the caller: ``LocalReference.resource_type`` is then
    ``""``."""
    if not isinstance(text, str) or not text or len(text) > 512:
        return None
    parts = text.rstrip("/").split("/")
    version = None
    if len(parts) >= 4 and parts[-2] == "_history":
        version = parts[-1]
        parts = parts[:-2]
        if not _VERSION.fullmatch(version):
            return None
    if len(parts) >= 2:
        resource_type, resource_id = parts[-2], parts[-1]
    elif version is None:
        resource_type, resource_id = default_type or "", parts[0]
    else:
        return None
    if not ID_PATTERN.fullmatch(resource_id):
        return None
    if resource_type and not TYPE_PATTERN.fullmatch(resource_type):
        return None
    return LocalReference(resource_type, resource_id, version)


def reference_parts(value: Any) -> tuple[str, str] | None:
    """(type, id) that a Reference element (a dict with ``reference``) names locally."""
    ref = parse_local(value.get("reference")) if isinstance(value, dict) else None
    return (ref.resource_type, ref.id) if ref is not None else None
