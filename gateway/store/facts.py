"""The consent facts of a resource's current version, sealed on its head row.

Search under consent decides which candidates to release from their facts (labels, codes, dates,
references: ``vocabulary.registry.FACT_PARAMS``) without decrypting their bodies. Those facts are
clinical, so they are kept the way bodies are: AES-256-GCM under the ring's active key, bound to
``facts:type/id/version`` so that a sealed blob moved to another row fails to open.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from gateway.errors import ServiceUnavailable
from gateway.keys import DecryptionError, KeyRing
from gateway.store.records import aad
from gateway.vocabulary.index import IndexEntry
from gateway.vocabulary.registry import FACT_PARAM_NAMES


def _associated(resource_type: str, resource_id: str, version_id: int) -> bytes:
    return b"facts:" + aad(resource_type, resource_id, version_id)


def seal_facts(
    ring: KeyRing,
    resource_type: str,
    resource_id: str,
    version_id: int,
    entries: Sequence[IndexEntry],
) -> tuple[str, bytes]:
    facts = [tuple(e) for e in entries if e.param in FACT_PARAM_NAMES]
    return ring.encrypt(orjson.dumps(facts), _associated(resource_type, resource_id, version_id))


def open_facts(
    ring: KeyRing,
    resource_type: str,
    resource_id: str,
    version_id: int,
    key_id: str,
    sealed: bytes,
) -> tuple[IndexEntry, ...]:
    try:
        plain = ring.decrypt(
            key_id, bytes(sealed), _associated(resource_type, resource_id, version_id)
        )
    except DecryptionError as exc:
        # Never decide on facts that do not authenticate: an integrity incident.
        raise ServiceUnavailable("a stored resource failed its integrity check") from exc
    return tuple(IndexEntry._make(values) for values in orjson.loads(plain))
