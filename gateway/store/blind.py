"""The blind search index: what ``search_index`` holds instead of the values themselves.

A copy of the database must not tell its reader who is in it, so no search value is stored in
clear. Each ``IndexEntry`` (clear, in memory) becomes rows of keyed blind values, HMAC-SHA-256
under a key derived from one key of the ring (its id is stored with the row, so that
``gateway db reindex`` moves every row to the active key after a rotation):

- **tokens** (identifiers, codes, systems, security labels): the HMAC of the system and of the
  code, each in its own column, so that ``system|code``, ``code`` and ``system|`` all still
  match by equality;
- **strings** (names, aliases): the HMAC of every normalised prefix (case- and accent-folded,
  up to ``PREFIX_CAP`` characters), one row each, so that FHIR's "starts with" is equality on
  one blind value; plus the HMAC of the value as written, for ``:exact``;
- **dates**: the year in clear (what HIPAA's Safe Harbor de-identification keeps of a date), and
  the HMAC of each finer prefix (month, day, hour, minute, second) of both ends of the range, so
  that ``eq``, ``ne``, ``lt``, ``le``, ``gt`` and ``ge`` compile to the year compared in clear
  and a few dozen blind values compared by equality (``criteria_sql``);
- **references** stay in clear: a local reference is a server id (``resources`` holds it
  anyway), never a name or an identifier.

Every blind value is keyed by the resource type and the parameter too, so equal values under two
parameters (a code that is also an identifier) do not show as equal. What a reader of a dump
still learns is written down in ``docs/encryption.md``: the number of rows of each kind per
resource (so roughly how long a name is), which rows hold equal values, and the years.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.keys import KeyRing
from gateway.vocabulary.index import IndexEntry
from gateway.vocabulary.registry import CONSENT_FACT_ONLY

INFO = b"care-gateway search-index v1"
TOKEN_BYTES = 16  # 128 bits: collisions are not a concern at any index size
PREFIX_CAP = 64  # longer names and search values are compared on their first 64 characters

# Prefix lengths of a stamp (``YYYY-MM-DDTHH:MM:SS.ffffff``) below the year: month, day, hour,
# minute, second. The microseconds are not indexed: searches compare to the second.
DATE_LEVELS = (7, 10, 13, 16, 19)

SYSTEM, CODE, PREFIX, EXACT, DATE = b"s", b"c", b"p", b"x", b"d"

Row = tuple[Any, ...]


class Blinder:
    """Blind values under the keys of one key ring: rows are written under the active key;
    a search compares with the values under every key, so that it finds rows not yet
    reindexed after a rotation."""

    __slots__ = ("_keys", "active")

    def __init__(self, keys: dict[str, bytes], active: str) -> None:
        # HMAC-SHA-256 (RFC 2104) with its two keyed SHA-256 states computed once per key:
        # each value then costs two state copies, not a key schedule (1.5 µs, not 3.7: measured).
        self._keys = {k: _keyed_states(secret) for k, secret in keys.items()}
        self.active = active

    @classmethod
    def from_ring(cls, ring: KeyRing) -> Blinder:
        return cls({k: ring.derive_for(k, INFO) for k in ring.key_ids}, ring.active)

    def value(self, domain: bytes, scope: bytes, clear: str, key_id: str | None = None) -> str:
        inner_state, outer_state = self._keys[key_id or self.active]
        inner = inner_state.copy()
        inner.update(domain + scope + clear.encode())
        outer = outer_state.copy()
        outer.update(inner.digest())
        digest: bytes = outer.digest()
        return digest[:TOKEN_BYTES].hex()

    def every(self, domain: bytes, scope: bytes, clear: str) -> list[str]:
        """The blind value under each key of the ring (a search's side)."""
        return self.many(domain, scope, (clear,))

    def many(self, domain: bytes, scope: bytes, clears: Iterable[str]) -> list[str]:
        return [self.value(domain, scope, c, k) for c in clears for k in self._keys]

    def rows(self, rid: int, resource_type: str, entries: Sequence[IndexEntry]) -> list[Row]:
        """The ``search_index`` rows of one version, in the table's column order."""
        out: list[Row] = []
        active = self.active
        for e in entries:
            if e.param in CONSENT_FACT_ONLY:
                continue  # read by consent only, from the sealed facts (never searched)
            head = (rid, resource_type, e.param)
            if e.ref_id is not None:
                out.append((*head, None, None, None, None, None, e.ref_type, e.ref_id, *_NO_DATE))
                continue
            scope = scope_of(resource_type, e.param)
            if e.code is not None or e.system is not None:
                system = self.value(SYSTEM, scope, e.system) if e.system is not None else None
                code = self.value(CODE, scope, e.code) if e.code is not None else None
                out.append((*head, active, system, code, None, None, None, None, *_NO_DATE))
            elif e.low is not None and e.high is not None:
                out.append(
                    (
                        *head,
                        active,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        *self._date(scope, e.low, e.high),
                    )
                )
            elif e.text is not None or e.raw is not None:
                exact = self.value(EXACT, scope, e.raw) if e.raw is not None else None
                prefixes = [self.value(PREFIX, scope, p) for p in prefixes_of(e.text or "")]
                first = prefixes[0] if prefixes else None
                out.append((*head, active, None, None, first, exact, None, None, *_NO_DATE))
                out.extend(
                    (*head, active, None, None, p, None, None, None, *_NO_DATE)
                    for p in prefixes[1:]
                )
            else:  # a flag: the parameter alone (``_consent-active``)
                out.append((*head, None, None, None, None, None, None, None, *_NO_DATE))
        return out

    def _date(self, scope: bytes, low: str, high: str) -> tuple[str, ...]:
        return (
            low[:4],
            high[:4],
            *(self.value(DATE, scope, low[:n]) for n in DATE_LEVELS),
            *(self.value(DATE, scope, high[:n]) for n in DATE_LEVELS),
        )


_NO_DATE: tuple[None, ...] = (None,) * (2 + 2 * len(DATE_LEVELS))
_BLOCK = 64  # SHA-256's block size


def _keyed_states(secret: bytes) -> tuple[Any, Any]:
    """SHA-256 already fed with HMAC's inner and outer padded keys (``hmac`` computes the same
    per call; ``test_blind_index`` holds the two equal)."""
    key = secret if len(secret) <= _BLOCK else hashlib.sha256(secret).digest()
    key = key.ljust(_BLOCK, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in key)),
        hashlib.sha256(bytes(b ^ 0x5C for b in key)),
    )


def scope_of(resource_type: str, param: str) -> bytes:
    """What keys a blind value besides its domain: equal values of two parameters differ."""
    return f"{resource_type}\x1f{param}\x1f".encode()


def prefixes_of(text: str) -> list[str]:
    """Every prefix of a normalised string, shortest first, up to ``PREFIX_CAP``."""
    capped = text[:PREFIX_CAP]
    return [capped[:n] for n in range(1, len(capped) + 1)]
