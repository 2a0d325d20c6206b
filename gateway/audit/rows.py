"""What one audit record is, as stored: the canonical event JSON, its link in the hash chain, and
its search values (the ``audit_index`` rows derived from it).

    hash(n) = SHA-256( prev_hash(n) ‖ seq(n) as 8 bytes big-endian ‖ recorded(n) ‖ 0x00 ‖ event(n) )
    prev_hash(1) = 32 zero bytes;  prev_hash(n) = hash(n-1)

Pure functions: the append path and ``verify`` compute them the same way, which is what lets
``verify`` recompute both the chain and the index from the events alone.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

GENESIS = bytes(32)


def canonical_event(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: bytes, seq: int, recorded: str, event: bytes) -> bytes:
    digest = hashlib.sha256(prev_hash)
    digest.update(seq.to_bytes(8, "big"))
    digest.update(recorded.encode())
    digest.update(b"\x00")
    digest.update(event)
    return digest.digest()


def index_values(event: dict[str, Any]) -> list[tuple[str, str]]:
    """The search values of one AuditEvent (R4 search parameters): ``patient`` (entities of
    role 1), ``entity`` (every entity, with and without its version), ``agent`` (who.reference),
    ``altid`` (the client id), ``type``, ``subtype``, ``outcome``, ``action``."""
    out: list[tuple[str, str]] = []
    for e in event.get("entity") or ():
        ref = (e.get("what") or {}).get("reference")
        if not isinstance(ref, str):
            continue
        out.append(("entity", ref))
        if "/_history/" in ref:
            out.append(("entity", ref.split("/_history/", 1)[0]))
        if (e.get("role") or {}).get("code") == "1":
            out.append(("patient", ref))
    for a in event.get("agent") or ():
        who = (a.get("who") or {}).get("reference")
        if isinstance(who, str):
            out.append(("agent", who))
        if isinstance(a.get("altId"), str):
            out.append(("altid", a["altId"]))
    out.append(("type", str((event.get("type") or {}).get("code"))))
    out += [("subtype", str(c.get("code"))) for c in event.get("subtype") or ()]
    out += [("outcome", str(event.get("outcome"))), ("action", str(event.get("action")))]
    return [(p, v[:255]) for p, v in dict.fromkeys(out)]
