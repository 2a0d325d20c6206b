"""The quarantine: input that could not land, kept encrypted and listed by reason.

A record the pipeline could not map or write, and input an adapter could not read, is held here
with what an operator needs to fix its source: the partner, the source system and record type,
the source (a file name, an MLLP peer, a URL path), the place in it (``row 12``, ``message 7``),
the reason and the places of the problem (file, row and column; segment and field; JSON path).
Those are promised PHI-free by the adapters and the mapping; they are kept in clear, capped in
length and stripped of control characters all the same. The bytes and the parsed fields are PHI:
``payload`` is AES-256-GCM (``KeyRing.encrypt``) of
``orjson({"raw": base64, "fields": ..., "source_version": ..., "source_id": ...})`` with the
row id and partner as associated data, so a payload copied onto another row does not decrypt.

Nothing is ever deleted: a retry that lands marks the item ``retried``, an operator's decision
``discarded``; a retry that fails again keeps it ``held`` with the new reason and one more
attempt. ``reencrypt`` moves payloads to the active key after ``gateway keys rotate``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, func, or_, select, update

from gateway.clock import Clock, SystemClock
from gateway.keys import DecryptionError, KeyRing
from gateway.store.schema import quarantine as quarantine_table
from gateway.vocabulary.dates import stamp
from gateway.vocabulary.source import Place

_T = quarantine_table

STATUSES = ("held", "retried", "discarded")
REASON_CAP = 500
SOURCE_CAP = 200  # source, locator, and each name of a place
NAME_CAP = 64  # partner id, system, record type
_ID_PREFIX = "q-"


class QuarantineNotFound(LookupError):
    """No quarantined item has that id."""


class QuarantineStateError(ValueError):
    """The item is not ``held``: only a held item is retried or discarded."""


@dataclass(frozen=True, slots=True)
class NewQuarantine:
    """Something to hold. ``source``, ``locator``, ``reason`` and ``places`` never hold PHI
    (they are shown to operators); ``raw``, ``fields`` and ``source_id`` are PHI and are
    encrypted. ``source_id`` is the record's id in its source, so that a retry lands on the
    same ledger entry."""

    partner_id: str
    system: str
    record_type: str
    source: str
    locator: str
    reason: str
    places: tuple[Place, ...]
    raw: bytes
    fields: Mapping[str, Any] | None
    source_version: str = ""
    source_id: str = ""


@dataclass(frozen=True, slots=True)
class QuarantineSummary:
    """What an operator is shown: where it came from and why it is held; never its content."""

    id: str
    received: datetime  # UTC
    partner_id: str
    system: str
    record_type: str
    source: str
    locator: str
    reason: str
    places: tuple[Place, ...]
    status: str  # "held" | "retried" | "discarded"
    attempts: int


@dataclass(frozen=True, slots=True)
class QuarantineDetail(QuarantineSummary):
    """A held item with its content, decrypted (for a retry; never printed)."""

    raw: bytes
    fields: Mapping[str, Any] | None
    source_version: str
    source_id: str


class Quarantine:
    def __init__(
        self,
        engine: Engine,
        keys: KeyRing | Callable[[], KeyRing],
        clock: Clock | None = None,
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._clock = clock or SystemClock()

    def add(self, items: Sequence[NewQuarantine]) -> list[str]:
        """Hold ``items``; their ids, in order. One insert batch, one transaction. An item held
        already (the same input for the same reason, still ``held``: the same export ingested
        twice) is not held twice: its existing id is returned."""
        if not items:
            return []
        ring = self._ring()
        secret = ring.derive(FINGERPRINT_INFO)
        prints = [_fingerprint(secret, item) for item in items]
        with self._engine.connect() as conn:
            known = dict(
                conn.execute(
                    select(_T.c.fingerprint, _T.c.id).where(
                        _T.c.fingerprint.in_(set(prints)), _T.c.status == "held"
                    )
                ).all()
            )
        ids: list[str] = []
        rows: list[dict[str, Any]] = []
        for item, fingerprint in zip(items, prints, strict=True):
            if fingerprint in known:
                ids.append(known[fingerprint])
                continue
            quarantine_id = _ID_PREFIX + secrets.token_urlsafe(9)
            known[fingerprint] = quarantine_id
            ids.append(quarantine_id)
            partner_id = clean(item.partner_id, NAME_CAP)
            key_id, blob = ring.encrypt(_payload(item), _aad(quarantine_id, partner_id))
            rows.append(
                {
                    "id": quarantine_id,
                    "received": stamp(self._clock.now()),
                    "partner_id": partner_id,
                    "system": clean(item.system, NAME_CAP),
                    "record_type": clean(item.record_type, NAME_CAP),
                    "source": clean(item.source, SOURCE_CAP),
                    "locator": clean(item.locator, SOURCE_CAP),
                    "reason": clean(item.reason, REASON_CAP),
                    "places": _places_json(item.places),
                    "status": "held",
                    "attempts": 0,
                    "key_id": key_id,
                    "payload": blob,
                    "fingerprint": fingerprint,
                }
            )
        if rows:
            with _write(self._engine) as conn:
                conn.execute(_T.insert(), rows)
        return ids

    def list(
        self,
        *,
        partner_id: str | None = None,
        status: str | None = "held",
        limit: int = 100,
        after: str | None = None,
    ) -> list[QuarantineSummary]:
        """Newest first, ``limit`` at a time; ``after``: the last id of the previous page.
        ``status=None`` lists every status."""
        if status is not None and status not in STATUSES:
            raise ValueError("status is held, retried, discarded or None (all)")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = select(*_SUMMARY)
        if partner_id is not None:
            query = query.where(_T.c.partner_id == partner_id)
        if status is not None:
            query = query.where(_T.c.status == status)
        with self._engine.connect() as conn:
            if after is not None:
                received = conn.execute(
                    select(_T.c.received).where(_T.c.id == after)
                ).scalar_one_or_none()
                if received is None:
                    raise QuarantineNotFound("no quarantined item has the id given as after")
                query = query.where(
                    or_(
                        _T.c.received < received,
                        and_(_T.c.received == received, _T.c.id < after),
                    )
                )
            rows = conn.execute(
                query.order_by(_T.c.received.desc(), _T.c.id.desc()).limit(limit)
            ).all()
        return [_summary(row) for row in rows]

    def counts(self, *, partner_id: str | None = None) -> dict[tuple[str, str], int]:
        """Held items by (system, record type)."""
        query = (
            select(_T.c.system, _T.c.record_type, func.count())
            .where(_T.c.status == "held")
            .group_by(_T.c.system, _T.c.record_type)
        )
        if partner_id is not None:
            query = query.where(_T.c.partner_id == partner_id)
        with self._engine.connect() as conn:
            return {(str(s), str(r)): int(n) for s, r, n in conn.execute(query)}

    def get(self, quarantine_id: str) -> QuarantineDetail | None:
        """The item with its content decrypted; None when no item has that id. A payload that
        does not authenticate raises ``DecryptionError``: tampered is never taken for absent."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(*_SUMMARY, _T.c.key_id, _T.c.payload).where(_T.c.id == quarantine_id)
            ).first()
        if row is None:
            return None
        plain = self._ring().decrypt(row.key_id, row.payload, _aad(row.id, row.partner_id))
        content = orjson.loads(plain)
        summary = _summary(row)
        return QuarantineDetail(
            id=summary.id,
            received=summary.received,
            partner_id=summary.partner_id,
            system=summary.system,
            record_type=summary.record_type,
            source=summary.source,
            locator=summary.locator,
            reason=summary.reason,
            places=summary.places,
            status=summary.status,
            attempts=summary.attempts,
            raw=base64.b64decode(content["raw"]),
            fields=content.get("fields"),
            source_version=str(content.get("source_version", "")),
            source_id=str(content.get("source_id", "")),
        )

    def mark(self, quarantine_id: str, status: str) -> None:
        """A held item ``retried`` (it landed; one more attempt) or ``discarded``."""
        if status == "retried":
            values: dict[str, Any] = {"status": status, "attempts": _T.c.attempts + 1}
        elif status == "discarded":
            values = {"status": status}
        else:
            raise ValueError("an item is marked retried or discarded")
        self._update_held(quarantine_id, values)

    def failed_retry(self, quarantine_id: str, reason: str, places: tuple[Place, ...]) -> None:
        """A retry that did not land: still held, one more attempt, the new reason and places."""
        self._update_held(
            quarantine_id,
            {
                "attempts": _T.c.attempts + 1,
                "reason": clean(reason, REASON_CAP),
                "places": _places_json(places),
            },
        )

    def reencrypt(self, batch_size: int = 500) -> Iterator[int]:
        """Re-encrypt payloads held under older keys with the active key, batch by batch;
        yields the rows done in each. A payload that does not authenticate stops it
        (``DecryptionError``): it is never rewritten."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        while True:
            ring = self._ring()
            with _write(self._engine) as conn:
                rows = conn.execute(
                    select(_T.c.id, _T.c.partner_id, _T.c.key_id, _T.c.payload)
                    .where(_T.c.key_id != ring.active)
                    .order_by(_T.c.id)
                    .limit(batch_size)
                ).all()
                for row in rows:
                    associated = _aad(row.id, row.partner_id)
                    plain = ring.decrypt(row.key_id, row.payload, associated)
                    key_id, blob = ring.encrypt(plain, associated)
                    conn.execute(
                        update(_T)
                        .where(_T.c.id == row.id, _T.c.key_id == row.key_id)
                        .values(key_id=key_id, payload=blob)
                    )
            if not rows:
                return
            yield len(rows)

    def count_by_key(self) -> dict[str, int]:
        """Held payloads per key id (what ``keys status`` would show beside the resources)."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(_T.c.key_id, func.count()).group_by(_T.c.key_id))
            return {str(k): int(n) for k, n in rows}

    # -- helpers -----------------------------------------------------------------------------

    def _update_held(self, quarantine_id: str, values: dict[str, Any]) -> None:
        with _write(self._engine) as conn:
            done = conn.execute(
                update(_T).where(_T.c.id == quarantine_id, _T.c.status == "held").values(**values)
            ).rowcount
            if done:
                return
            status = conn.execute(
                select(_T.c.status).where(_T.c.id == quarantine_id)
            ).scalar_one_or_none()
        if status is None:
            raise QuarantineNotFound("no quarantined item has that id")
        raise QuarantineStateError(f"the item is {status}, not held")

    def _ring(self) -> KeyRing:
        return self._keys if isinstance(self._keys, KeyRing) else self._keys()


_SUMMARY = (
    _T.c.id,
    _T.c.received,
    _T.c.partner_id,
    _T.c.system,
    _T.c.record_type,
    _T.c.source,
    _T.c.locator,
    _T.c.reason,
    _T.c.places,
    _T.c.status,
    _T.c.attempts,
)

# Categories removed from what is kept in clear: controls, format characters (bidirectional
# overrides that make a reason read otherwise), surrogates, private use, line separators.
_DROPPED = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def clean(text: str, cap: int) -> str:
    """``text`` without control or format characters (each becomes a space, runs of spaces
    one), at most ``cap`` characters (the last one ``…`` when cut)."""
    if not isinstance(text, str):
        text = ""
    out = "".join(" " if unicodedata.category(c) in _DROPPED else c for c in text)
    out = " ".join(out.split())
    if len(out) > cap:
        out = out[: cap - 1] + "…"
    return out


@contextmanager
def _write(engine: Engine) -> Iterator[Connection]:
    """One write transaction, committed on success (SQLite: ``BEGIN IMMEDIATE``)."""
    with engine.connect() as conn:
        conn.execution_options(gateway_write=True)
        with conn.begin():
            yield conn


FINGERPRINT_INFO = b"care-gateway quarantine-fingerprint v1"


def _fingerprint(secret: bytes, item: NewQuarantine) -> str:
    """A keyed digest of what makes two held items the same (a plain hash of the bytes would
    be a dictionary attack away from them)."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (
        item.partner_id, item.system, item.record_type, item.source, item.locator, item.reason,
        item.source_id,
    ):  # fmt: skip
        data = part.encode("utf-8")
        mac.update(len(data).to_bytes(4, "big") + data)
    mac.update(len(item.raw).to_bytes(8, "big") + item.raw)
    return mac.hexdigest()


def _aad(quarantine_id: str, partner_id: str) -> bytes:
    return f"quarantine\x1f{quarantine_id}\x1f{partner_id}".encode()


def _payload(item: NewQuarantine) -> bytes:
    fields = None if item.fields is None else dict(item.fields)
    doc = {
        "raw": base64.b64encode(bytes(item.raw)).decode("ascii"),
        "fields": fields,
        "source_version": item.source_version,
        "source_id": item.source_id,
    }
    # Quarantine must never lose input: a value orjson cannot encode is kept as its text.
    return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS)


_PLACE_NAMES = ("file", "column", "segment", "field")


def _places_json(places: tuple[Place, ...]) -> str:
    out: list[dict[str, Any]] = []
    for place in places:
        doc: dict[str, Any] = {}
        for name in _PLACE_NAMES:
            value = clean(getattr(place, name), SOURCE_CAP)
            if value:
                doc[name] = value
        if isinstance(place.row, int) and not isinstance(place.row, bool):
            doc["row"] = place.row
        out.append(doc)
    return orjson.dumps(out).decode()


def _places(text: str) -> tuple[Place, ...]:
    return tuple(
        Place(
            file=doc.get("file", ""),
            row=doc.get("row"),
            column=doc.get("column", ""),
            segment=doc.get("segment", ""),
            field=doc.get("field", ""),
        )
        for doc in orjson.loads(text)
    )


def _summary(row: Any) -> QuarantineSummary:
    return QuarantineSummary(
        id=row.id,
        received=datetime.fromisoformat(row.received).replace(tzinfo=UTC),
        partner_id=row.partner_id,
        system=row.system,
        record_type=row.record_type,
        source=row.source,
        locator=row.locator,
        reason=row.reason,
        places=_places(row.places),
        status=row.status,
        attempts=int(row.attempts),
    )


__all__ = [
    "STATUSES",
    "DecryptionError",
    "NewQuarantine",
    "Place",
    "Quarantine",
    "QuarantineDetail",
    "QuarantineNotFound",
    "QuarantineStateError",
    "QuarantineSummary",
    "clean",
]
