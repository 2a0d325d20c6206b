"""What a partner typed, sealed inside its AuditEvent.

An AuditEvent is references and codes, except the query a search sent (BALP keeps it in
``entity.query``): ``family=okafor&birthdate=1988-11-02`` names a survivor. So before an event
reaches the chain its query is sealed: AES-256-GCM under the active key of the encryption ring
(the key id travels with it, so a rotation leaves old events readable), and ``entity.query`` is
replaced by an extension holding ``key-id.ciphertext``. The chain hashes the sealed form; the
compliance review (``GET /fhir/AuditEvent``, compliance kind only) opens it again before it
answers. Nothing else in an event comes from the request but references the gateway checked
and rule names.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from gateway.errors import ServiceUnavailable
from gateway.keys import DecryptionError, KeyRing, new_encryption_key

SEALED_QUERY = "urn:care-gateway:audit:sealed-query"
ASSOCIATED = b"care-gateway audit query v1"


class EventSeal:
    """Seals and opens the query of AuditEvents under the ring ``ring()`` returns now."""

    def __init__(self, ring: Callable[[], KeyRing]) -> None:
        self._ring = ring

    @classmethod
    def ephemeral(cls) -> EventSeal:
        """For a gateway without key material (the in-memory twin in tests): one process."""
        from datetime import UTC, datetime

        key = new_encryption_key(datetime.now(UTC))
        ring = KeyRing([key], key.key_id)
        return cls(lambda: ring)

    def seal(self, event: dict[str, Any]) -> dict[str, Any]:
        entities = event.get("entity")
        if not entities or not any("query" in e for e in entities):
            return event
        ring = self._ring()
        sealed = []
        for entity in entities:
            if "query" in entity:
                plain = base64.b64decode(entity["query"])
                key_id, blob = ring.encrypt(plain, ASSOCIATED)
                value = f"{key_id}.{base64.urlsafe_b64encode(blob).decode()}"
                entity = {k: v for k, v in entity.items() if k != "query"}
                entity["extension"] = [
                    *entity.get("extension", []),
                    {"url": SEALED_QUERY, "valueString": value},
                ]
            sealed.append(entity)
        return {**event, "entity": sealed}

    def open(self, event: dict[str, Any]) -> dict[str, Any]:
        entities = event.get("entity")
        if not entities or not any(_sealed(e) for e in entities):
            return event
        ring = self._ring()
        opened = []
        for entity in entities:
            value = _sealed(entity)
            if value is not None:
                entity = dict(entity)
                rest = [x for x in entity.pop("extension") if x.get("url") != SEALED_QUERY]
                if rest:
                    entity["extension"] = rest
                entity["query"] = base64.b64encode(_open(ring, value)).decode()
            opened.append(entity)
        return {**event, "entity": opened}


def _sealed(entity: dict[str, Any]) -> str | None:
    for extension in entity.get("extension", ()):
        if extension.get("url") == SEALED_QUERY and isinstance(extension.get("valueString"), str):
            return str(extension["valueString"])
    return None


def _open(ring: KeyRing, value: str) -> bytes:
    key_id, _, blob = value.partition(".")
    try:
        return ring.decrypt(key_id, base64.urlsafe_b64decode(blob), ASSOCIATED)
    except (DecryptionError, binascii.Error, ValueError) as exc:
        raise ServiceUnavailable("an audit event failed its integrity check") from exc
