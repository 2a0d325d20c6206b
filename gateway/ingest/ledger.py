"""The ingest ledger: which gateway id the resource of each source record has.

A partner's source system names its records by its own ids (a PersonalID, a matter uuid, an
RF1-6 referral number); the gateway names resources by random uuid4 ids. The ledger joins the
two, per partner (the same PersonalID at two partners is two people), so that ingesting a
record again updates its resource instead of creating a second one, and a record that did not
change since it was last written is skipped (``unchanged``).

Nothing of the source key is stored in clear (a source id is PHI-ish: it names a client in the
partner's system). A row is keyed by ``blind_key``: HMAC-SHA-256 of the canonical encoding of
the whole ``LedgerKey`` (each field length-prefixed, so ``("a:b", "c")`` and ``("a", "b:c")``
differ) under a key derived from one key of the ring (``derive_for(key_id, INFO)``), with that
key id beside it; the pair is the primary key. The content digest is an HMAC under the same
derived key (a plain SHA-256 of a record would be a dictionary attack away from its values),
stored with its own key id. Partner, resource type and the resource id stay in clear (partner
ids are configuration; resource ids are random).

Rotation: a lookup computes the blind key under every key of the ring, so an entry reserved
under an older key is found (and keeps its id) after ``gateway keys rotate``; new entries are
reserved under the active key. ``reserve`` inserts under a per-partner transaction lock on
PostgreSQL (SQLite writers hold the database lock), after looking again under every key, so
two reservers whose rings differ by a rotation still end with one id; the primary key and
``ON CONFLICT DO NOTHING`` then a re-read are the second wall. A process whose ring is behind
(``FileKeyRing`` re-reads the file at most once a second) cannot see rows under the newest key:
before it reserves, and before it answers a lookup, it asks which key ids the ledger uses (a
skip scan of the primary key, one step per key id) and refuses to go on with a ring that lacks
one (``KeyRingBehind``); given a ring function it asks it again, a few times, first.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.keys import KeyRing
from gateway.store.schema import ingest_ledger

INFO = b"care-gateway ingest-ledger v1"
_KEY_DOMAIN = b"ledger-key\x00"
_CONTENT_DOMAIN = b"ledger-content\x00"
_CHUNK = 500  # blind values per IN (...) list: far below either database's parameter limit
_LOCK = "care-gateway ingest-ledger "
_MAX_NAME = 64  # partner ids, systems, types: the columns' width

_T = ingest_ledger
_CATCH_UP = (0.5, 1.0, 1.5)  # seconds to wait for a ring function to see a rotation
# The distinct key ids of the ledger, one index probe each (the primary key starts with key_id).
_KEY_IDS = text(
    """
    WITH RECURSIVE ids(k) AS (
        SELECT MIN(key_id) FROM ingest_ledger
        UNION ALL
        SELECT (SELECT MIN(key_id) FROM ingest_ledger WHERE key_id > ids.k) FROM ids
         WHERE ids.k IS NOT NULL
    )
    SELECT k FROM ids WHERE k IS NOT NULL
    """
)

_MARK_MANY = text(
    """
    UPDATE ingest_ledger AS l
       SET written = TRUE, content_key_id = v.content_key, content_digest = v.digest,
           mapping_sha256 = v.mapping
      FROM unnest(CAST(:b_type AS text[]), CAST(:b_id AS text[]), CAST(:b_partner AS text[]),
                  CAST(:b_content_key AS text[]), CAST(:b_digest AS text[]),
                  CAST(:b_mapping AS text[]))
           AS v(resource_type, resource_id, partner_id, content_key, digest, mapping)
     WHERE l.resource_type = v.resource_type AND l.resource_id = v.resource_id
       AND l.partner_id = v.partner_id
    """
)


class KeyRingBehind(RuntimeError):
    """The ledger holds rows under a key this ring does not know (a rotation it has not seen
    yet): looking up or reserving with it could give a key a second id."""


@dataclass(frozen=True, slots=True)
class LedgerKey:
    """A source record's resource: ids are per partner, source system and record type."""

    partner_id: str
    system: str  # "hmis-csv", "legalserver", "hl7v2", "fhir"
    resource_type: str  # "Patient"
    record_type: str  # "Client"
    source_id: str  # "CL-20417": never stored in clear


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """What the ledger holds for a key. ``written`` is False while the id is only reserved
    (and ``mapping_sha256`` is then ""). The content digest (a keyed HMAC, and the key id it is
    under) travels with the entry so that ``unchanged`` needs no further statement."""

    key: LedgerKey
    resource_id: str
    written: bool
    mapping_sha256: str
    content_key_id: str = field(default="", repr=False)
    content_digest: str = field(default="", repr=False)


class Ledger:
    def __init__(self, engine: Engine, keys: KeyRing | Callable[[], KeyRing]) -> None:
        self._engine = engine
        self._keys = keys
        self._derived: tuple[KeyRing, dict[str, bytes]] | None = None
        self._postgres = engine.dialect.name == "postgresql"

    # -- the public operations --------------------------------------------------------------

    def lookup(self, keys: Iterable[LedgerKey]) -> dict[LedgerKey, LedgerEntry]:
        """The entries of those ``keys`` the ledger holds (absent keys are left out), found
        under every key of the ring, in a few statements whatever the number of keys."""
        wanted = _distinct(keys)
        if not wanted:
            return {}
        for wait in (*_CATCH_UP, None):
            ring = self._ring()
            with self._engine.connect() as conn:
                if self._knows_every_key(conn, ring):
                    return self._find(conn, ring, wanted)
            self._catch_up(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def reserve(self, keys: Iterable[LedgerKey]) -> dict[LedgerKey, LedgerEntry]:
        """An entry for every key: those held are returned, the others created with a fresh
        uuid4 id (``written=False``) and committed before this returns, so a crash after it
        never gives a key a second id. Reservers racing for a key end with one id."""
        wanted = _distinct(keys)
        if not wanted:
            return {}
        ring = self._ring()
        with self._engine.connect() as conn:
            found = self._find(conn, ring, wanted)
        missing = [k for k in wanted if k not in found]
        for wait in (*_CATCH_UP, None):
            if not missing:
                break
            created = self._create(ring, missing)
            if created is not None:
                found.update(created)
                break
            self._catch_up(wait)
            ring = self._ring()
        return {k: found[k] for k in wanted}

    def unchanged(
        self, entry: LedgerEntry, content: Mapping[str, Any], mapping_sha256: str
    ) -> bool:
        """True when ``entry`` was written from this very ``content`` (canonical JSON, keys
        sorted) by the mapping with this ``mapping_sha256``; False for a reserved entry, another
        mapping, other content, or a digest under a key the ring no longer has."""
        if not entry.written or not entry.content_digest or entry.mapping_sha256 != mapping_sha256:
            return False
        ring = self._ring()
        if not ring.knows(entry.content_key_id):
            return False
        secret = self._secrets(ring)[entry.content_key_id]
        return hmac.compare_digest(_digest(secret, content), entry.content_digest)

    def mark_written(self, items: Iterable[tuple[LedgerEntry, Mapping[str, Any], str]]) -> None:
        """After the resources are stored: each entry is ``written``, with the digest of its
        content (under the active key) and the mapping's sha, in one statement batch."""
        ring = self._ring()
        secret = self._secrets(ring)[ring.active]
        by_resource: dict[tuple[str, str], dict[str, Any]] = {}
        for entry, content, mapping_sha in items:
            if len(mapping_sha) > _MAX_NAME:
                raise ValueError("mapping_sha256 is longer than a SHA-256 in hex")
            by_resource[(entry.key.resource_type, entry.resource_id)] = {
                "b_type": entry.key.resource_type,
                "b_id": entry.resource_id,
                "b_partner": entry.key.partner_id,
                "b_content_key": ring.active,
                "b_digest": _digest(secret, content),
                "b_mapping": mapping_sha,
            }
        if not by_resource:
            return
        params = list(by_resource.values())
        statement = (
            update(_T)
            .where(
                _T.c.resource_type == bindparam("b_type"),
                _T.c.resource_id == bindparam("b_id"),
                _T.c.partner_id == bindparam("b_partner"),
            )
            .values(
                written=True,
                content_key_id=bindparam("b_content_key"),
                content_digest=bindparam("b_digest"),
                mapping_sha256=bindparam("b_mapping"),
            )
        )
        with _write(self._engine) as conn:
            if self._postgres:  # one statement over arrays, not a round trip per row
                columns = ("b_type", "b_id", "b_partner", "b_content_key", "b_digest", "b_mapping")
                done = conn.execute(
                    _MARK_MANY, {c: [p[c] for p in params] for c in columns}
                ).rowcount
            else:  # SQLite: executemany in process, under the write lock
                done = conn.execute(statement, params).rowcount
            if done != len(params):
                raise LookupError("an entry marked written is not in the ingest ledger")

    # -- rows --------------------------------------------------------------------------------

    def _find(
        self, conn: Connection, ring: KeyRing, keys: list[LedgerKey]
    ) -> dict[LedgerKey, LedgerEntry]:
        secrets = self._secrets(ring)
        blinds: dict[tuple[str, str], LedgerKey] = {}
        for key in keys:
            encoded = _canonical(key)
            for key_id, secret in secrets.items():
                blinds[(key_id, _blind(secret, encoded))] = key
        values = sorted({blind for _, blind in blinds})
        found: dict[LedgerKey, LedgerEntry] = {}
        for start in range(0, len(values), _CHUNK):
            rows = conn.execute(
                select(_T).where(_T.c.blind_key.in_(values[start : start + _CHUNK]))
            ).all()
            for row in rows:
                owner = blinds.get((row.key_id, row.blind_key))
                if owner is None or (row.partner_id, row.resource_type) != (
                    owner.partner_id,
                    owner.resource_type,
                ):
                    continue
                entry = LedgerEntry(
                    owner,
                    row.resource_id,
                    bool(row.written),
                    row.mapping_sha256 or "",
                    row.content_key_id or "",
                    row.content_digest or "",
                )
                held = found.get(owner)
                if held is None or _preferred(entry, held):
                    found[owner] = entry
        return found

    def _create(
        self, ring: KeyRing, missing: list[LedgerKey]
    ) -> dict[LedgerKey, LedgerEntry] | None:
        """Entries for ``missing``, inserted where absent; None when ``ring`` is behind."""
        secret = self._secrets(ring)[ring.active]
        with _write(self._engine) as conn:
            if self._postgres:
                for partner in sorted({k.partner_id for k in missing}):
                    conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(_LOCK + partner))))
            if not self._knows_every_key(conn, ring):
                return None
            # Under the lock: another reserver (perhaps with a rotated ring) may have won.
            found = self._find(conn, ring, missing)
            for _attempt in range(3):
                absent = [k for k in missing if k not in found]
                if not absent:
                    break
                rows = [
                    {
                        "key_id": ring.active,
                        "blind_key": _blind(secret, _canonical(k)),
                        "partner_id": k.partner_id,
                        "resource_type": k.resource_type,
                        "resource_id": str(uuid.uuid4()),
                        "written": False,
                        "content_key_id": None,
                        "content_digest": None,
                        "mapping_sha256": "",
                    }
                    for k in absent
                ]
                dialect = postgresql if self._postgres else sqlite
                inserted = conn.execute(dialect.insert(_T).on_conflict_do_nothing(), rows)
                if inserted.rowcount == len(rows):
                    # Every row is ours (under the lock no other reserver inserts these keys):
                    # the entries are what was just written, with no second read.
                    found.update(
                        (k, LedgerEntry(k, str(row["resource_id"]), False, "", "", ""))
                        for k, row in zip(absent, rows, strict=True)
                    )
                else:
                    found.update(self._find(conn, ring, absent))
            else:
                raise RuntimeError("the ingest ledger could not reserve ids")
        return found

    # -- keys --------------------------------------------------------------------------------

    @staticmethod
    def _knows_every_key(conn: Connection, ring: KeyRing) -> bool:
        return all(ring.knows(k) for k in conn.execute(_KEY_IDS).scalars())

    def _catch_up(self, wait: float | None) -> None:
        """Wait for a ring function to see the rotation; a fixed ring never will."""
        if wait is None or isinstance(self._keys, KeyRing):
            raise KeyRingBehind(
                "the ingest ledger holds rows under a key this key ring does not know: "
                "reload the key ring (after `gateway keys rotate`) and try again"
            )
        time.sleep(wait)

    def _ring(self) -> KeyRing:
        return self._keys if isinstance(self._keys, KeyRing) else self._keys()

    def _secrets(self, ring: KeyRing) -> dict[str, bytes]:
        """The ledger's HMAC key under each key of ``ring``, derived once per ring."""
        cached = self._derived
        if cached is None or cached[0] is not ring:
            cached = self._derived = (ring, {k: ring.derive_for(k, INFO) for k in ring.key_ids})
        return cached[1]


@contextmanager
def _write(engine: Engine) -> Iterator[Connection]:
    """One write transaction, committed on success: on SQLite ``BEGIN IMMEDIATE`` (the database
    lock up front, ``store/database.py``), on PostgreSQL an ordinary transaction."""
    with engine.connect() as conn:
        conn.execution_options(gateway_write=True)
        with conn.begin():
            yield conn


def _distinct(keys: Iterable[LedgerKey]) -> list[LedgerKey]:
    wanted = list(dict.fromkeys(keys))
    for key in wanted:
        _check(key)
    return wanted


def _check(key: LedgerKey) -> None:
    for name in ("partner_id", "system", "resource_type", "record_type", "source_id"):
        value = getattr(key, name)
        if not isinstance(value, str):
            raise TypeError(f"LedgerKey.{name} is not a string")
        if name != "record_type" and not value:
            raise ValueError(f"LedgerKey.{name} is empty")
    for name in ("partner_id", "resource_type"):
        if len(getattr(key, name)) > _MAX_NAME:
            raise ValueError(f"LedgerKey.{name} is longer than {_MAX_NAME} characters")


def _canonical(key: LedgerKey) -> bytes:
    """Each field length-prefixed (4 bytes, big-endian), so no two keys encode alike."""
    out = bytearray()
    for value in (key.partner_id, key.system, key.resource_type, key.record_type, key.source_id):
        encoded = value.encode("utf-8", "surrogatepass")
        out += len(encoded).to_bytes(4, "big") + encoded
    return bytes(out)


def _blind(secret: bytes, encoded: bytes) -> str:
    return hmac.new(secret, _KEY_DOMAIN + encoded, sha256).hexdigest()


def _digest(secret: bytes, content: Mapping[str, Any]) -> str:
    plain = content if isinstance(content, dict) else dict(content)
    canonical = orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)
    return hmac.new(secret, _CONTENT_DOMAIN + canonical, sha256).hexdigest()


def _preferred(entry: LedgerEntry, held: LedgerEntry) -> bool:
    """Of two rows for one key (only a ring a rotation behind can make them), the written one,
    then the smaller id: every caller picks the same."""
    return (not entry.written, entry.resource_id) < (not held.written, held.resource_id)
