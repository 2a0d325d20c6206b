"""What every store does the same way when it writes a version: set the server-owned elements,
produce canonical JSON, derive the index rows, and name the associated data for encryption."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.vocabulary.index import IndexEntry, extract


def new_id() -> str:
    return str(uuid.uuid4())


def canonical(resource: dict[str, Any]) -> bytes:
    """Canonical JSON: keys sorted, no insignificant whitespace, UTF-8."""
    return orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)


def fhir_instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def aad(resource_type: str, resource_id: str, version_id: int) -> bytes:
    """Associated data binding a ciphertext to its row: a swapped row fails to decrypt."""
    return f"{resource_type}/{resource_id}/{version_id}".encode()


@dataclass(frozen=True, slots=True)
class PreparedVersion:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    body: bytes
    index: list[IndexEntry]


def prepare(
    resource: dict[str, Any], resource_id: str, version_id: int, now: datetime
) -> PreparedVersion:
    """Stamp id, meta.versionId and meta.lastUpdated (server-owned) and derive the index."""
    # Milliseconds are what we publish; keep the stored clock the same so both agree.
    now = now.astimezone(UTC).replace(microsecond=now.microsecond // 1000 * 1000)
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = fhir_instant(now)
    stamped = {**resource, "id": resource_id, "meta": meta}
    return PreparedVersion(
        resource_type=resource["resourceType"],
        id=resource_id,
        version_id=version_id,
        last_updated=now,
        body=canonical(stamped),
        index=extract(stamped),
    )
