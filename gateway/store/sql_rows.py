"""Rows of the SQL store turned into what the port returns: the current-version select, and
opening a version (decrypting and authenticating it) into a ``StoredResource``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, false, func, select

from gateway.errors import (
    ServiceUnavailable,
)
from gateway.keys import DecryptionError, KeyRing
from gateway.store.port import Located, StoredResource
from gateway.store.records import PreparedVersion, aad
from gateway.store.schema import resource_versions as V
from gateway.store.schema import resources as R

CURRENT_VERSION = (
    select(
        R.c.rid,
        R.c.resource_type,
        R.c.id,
        R.c.version_id,
        R.c.last_updated,
        R.c.deleted,
        V.c.key_id,
        V.c.payload,
        R.c.contributor,
    )
    .select_from(R)
    .join(V, and_(V.c.rid == R.c.rid, V.c.version_id == R.c.version_id))
)


def parse_stamp(value: str) -> datetime:
    return datetime.fromisoformat(value + "+00:00")


def open_version(
    ring: KeyRing,
    resource_type: str,
    resource_id: str,
    version_id: int,
    last_updated: str,
    key_id: str,
    payload: bytes,
    contributor: str | None,
) -> StoredResource:
    try:
        body = ring.decrypt(key_id, bytes(payload), aad(resource_type, resource_id, version_id))
    except DecryptionError as exc:
        # Never serve an unauthenticated row: an integrity incident, not a 404.
        raise ServiceUnavailable("a stored resource failed its integrity check") from exc
    return StoredResource(
        resource_type, resource_id, version_id, parse_stamp(last_updated), False, body, contributor
    )


def located_row(ring: KeyRing, resource_type: str, resource_id: str, row: Any) -> Located | None:
    if row is None:
        return None
    head_version, deleted, contributor, version_id, last_updated, key_id, payload = row
    live = open_version(
        ring, resource_type, resource_id, version_id, last_updated, key_id, payload, contributor
    )
    return Located(head_version, bool(deleted), contributor, live)


def stored_version(v: PreparedVersion, contributor: str | None) -> StoredResource:
    return StoredResource(
        v.resource_type, v.id, v.version_id, v.last_updated, False, v.body, contributor
    )


def count_unindexed(conn: Connection) -> int:
    """Live records without sealed consent facts: written before the blind index (migration
    0005) and not reindexed since; search finds none of them and consent releases none."""
    count: int = conn.execute(
        select(func.count()).select_from(R).where(R.c.deleted == false(), R.c.facts.is_(None))
    ).scalar_one()
    return count
