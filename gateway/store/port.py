"""The store port: what every store (SQL, in-memory) offers, the values it returns, and the
search it is asked (``SearchQuery``, parsed by ``store.query``; ``Visibility`` and
``ConsentReach``: what a requester may see, and how the store asks consent).

A store hands out *sessions*: ``store.transaction()`` is one atomic unit of work (a transaction
Bundle runs inside one); the convenience methods on the store each run in their own.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from gateway.errors import BadRequest
from gateway.vocabulary.index import IndexEntry
from gateway.vocabulary.registry import Kind
from gateway.write.admit import ValidResource


@dataclass(frozen=True, slots=True)
class StoredResource:
    """One version of a resource as stored: its canonical JSON bytes, decrypted."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    body: bytes  # canonical JSON; empty for a deletion marker
    # The partner that created the resource (kept by the store, never in the body: who holds a
    # survivor's record can itself be sensitive). None for data the gateway wrote itself.
    contributor: str | None = None

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.resource_type, self.id)


@dataclass(frozen=True, slots=True)
class SearchPage:
    matches: list[StoredResource]
    total: int | None
    next_cursor: str | None = None
    prev_cursor: str | None = None
    included: list[StoredResource] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: list[StoredResource]  # newest first
    next_before: int | None = None  # version id to continue below


@dataclass(frozen=True, slots=True)
class Located:
    """A record as the doors that address one by id first find it: its head (current version,
    deleted or not, contributor) and ``live``, the newest version that has a body (the current
    one; for a deleted record the last one before the deletion)."""

    version_id: int
    deleted: bool
    contributor: str | None
    live: StoredResource


# -- a search, as the store is asked it -------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenCriterion:
    system: str | None  # None: any system; "": explicitly no system
    code: str | None  # None: any code in the system


@dataclass(frozen=True, slots=True)
class ReferenceCriterion:
    ref_type: str | None
    ref_id: str


@dataclass(frozen=True, slots=True)
class DateCriterion:
    prefix: str
    low: str
    high: str


@dataclass(frozen=True, slots=True)
class StringCriterion:
    value: str  # normalised unless the modifier is :exact


Criterion = TokenCriterion | ReferenceCriterion | DateCriterion | StringCriterion


@dataclass(frozen=True, slots=True)
class Clause:
    """One parameter occurrence: its values are OR-ed; clauses are AND-ed."""

    name: str  # parameter name; "_id" and "_lastUpdated" address the resource itself
    kind: Kind
    modifier: str | None
    criteria: tuple[Criterion, ...] = ()
    missing: bool | None = None
    ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Include:
    source_type: str
    param: str
    target_type: str | None


@dataclass(frozen=True, slots=True)
class Cursor:
    """Keyset position: the sort key of the last (``after``) or first (``before``) row shown."""

    key: tuple[Any, ...]
    after: bool = True

    def encode(self) -> str:
        raw = orjson.dumps({"k": list(self.key), "a": self.after})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, sort: tuple[tuple[str, bool], ...] = ()) -> Cursor:
        """The position in ``token``, whose key must have the shape of ``sort``'s: one string
        per sort field, then the row number."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            doc = orjson.loads(raw)
            key = tuple(doc["k"])
            after = doc["a"]
        except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BadRequest("_cursor is not a valid paging token") from exc
        shaped = (
            isinstance(after, bool)
            and len(key) == len(sort) + 1
            and all(isinstance(k, str) and len(k) <= 64 for k in key[:-1])
            and isinstance(key[-1], int)
            and not isinstance(key[-1], bool)
            and 0 <= key[-1] < 2**63
        )
        if not shaped:
            raise BadRequest("_cursor does not belong to this search")
        return cls(key, after)


@dataclass(frozen=True, slots=True)
class SearchQuery:
    resource_type: str
    clauses: tuple[Clause, ...] = ()
    sort: tuple[tuple[str, bool], ...] = ()  # (field, descending); field: _lastUpdated | _id
    count: int = 50
    cursor: Cursor | None = None
    # The client's ``_cursor`` as sent (sealed); see ``gateway.store.paging``.
    cursor_token: str | None = field(default=None, compare=False)
    includes: tuple[Include, ...] = ()
    revincludes: tuple[Include, ...] = ()
    summary_count: bool = False
    with_total: bool = True  # _total=none: the client does not need Bundle.total
    # What the next link must repeat (everything but the cursor), in request order.
    echo: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # Set by the consent layer, never by a client: restrict matches *and* includes to what the
    # partner may see, inside the store, so totals and paging count only those.
    visible_to: Visibility | None = None
    # Only what the requester holds (contributed, or the directory), never what a Consent lets
    # it see: conditional create asks "do I already have this?", and a match on another
    # partner's record would answer with an id the requester cannot update.
    held_only: bool = False

    def position(self) -> Cursor | None:
        """Where the page starts: the consent layer opens a client's sealed token into
        ``cursor``; a trusted caller of the raw store may pass the store's own token."""
        if self.cursor is not None or self.cursor_token is None:
            return self.cursor
        return Cursor.decode(self.cursor_token, self.sort)


@dataclass(frozen=True, slots=True)
class Candidate:
    """Another partner's record that consent might release, as the store knows it without
    decrypting: its head and the consent-fact index rows of its current version
    (``vocabulary.registry.FACT_PARAM_NAMES``)."""

    resource_type: str
    id: str
    contributor: str | None
    entries: tuple[IndexEntry, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.resource_type, self.id)


# Decides a batch of candidates at once (one lookup of the patients' Consents) and answers the
# keys of those released. The store passes its own unit of work, so that Consents are read in
# the same snapshot and on the same connection (a second pool checkout per request could
# exhaust the pool under load).
Release = Callable[["StoreSession", Sequence[Candidate]], AbstractSet[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class ConsentReach:
    """Which records of other partners are worth asking the consent engine about.

    The store narrows in SQL to a superset of what the engine could release, so that a search
    hands the engine a handful of rows rather than the network's: records of patients with an
    active Consent that names ``actor`` (a permit releases only to an actor named on its path),
    plus any record of ``open_types`` (released without such a Consent: break-glass types for
    an emergency request, directory entries an administrator wrote). ``release`` then decides.
    """

    actor: tuple[str, str]  # the requester's Organization: ("Organization", "harbor-clinic")
    open_types: frozenset[str]
    release: Release
    # Further criteria a record of another partner must meet (e.g. an identifier search
    # matches it only through a person identifier, the only kind it is shown).
    clauses: tuple[Clause, ...] = ()


@dataclass(frozen=True, slots=True)
class Visibility:
    """What a partner sees: what it contributed, the directory entries (types the network
    policy lists) that the gateway itself wrote, and, when ``reach`` is given, the records of
    other partners that ``reach.release`` releases. A store may narrow what it hands to
    ``release`` as ``ConsentReach`` says (SQL does); the in-memory twin hands it everything, so
    the contract tests prove the narrowing never hides what the engine would release."""

    partner_id: str
    directory_types: frozenset[str] = frozenset()
    reach: ConsentReach | None = None

    def admits(self, resource_type: str, contributor: str | None) -> bool:
        """Visible without asking consent."""
        if contributor is not None:
            return contributor == self.partner_id
        return resource_type in self.directory_types


# -- sessions ---------------------------------------------------------------------------


class StoreSession(Protocol):
    def create(self, resource: ValidResource, *, resource_id: str | None = None) -> StoredResource:
        """A new resource, under ``resource_id`` when given (a transaction assigns ids to its
        entries before it runs them), else a fresh id; Conflict when the id is taken. Its
        contributor is the one ``admit`` gave it."""
        ...

    def locate(self, resource_type: str, resource_id: str) -> Located | None:
        """The record's head and newest live version, in one lookup; None when absent."""
        ...

    def contributors(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        """The contributor of each record of ``keys`` (resource type, id) that has a head,
        live or deleted; absent records are left out. A few statements whatever the number of
        keys (the batch write path's ownership check)."""
        ...

    def consent_probe(self, patient_id: str, *, recorder: str, actor: tuple[str, str]) -> bool:
        """Whether an active Consent of ``patient_id`` recorded by ``recorder`` names ``actor``
        (an Organization) anywhere in its provisions: the only Consents that can release that
        recorder's records of her to that actor. An index lookup whose cost does not depend on
        the patient or recorder existing, so that asking about a record that is hidden costs
        what asking about one that never existed costs."""
        ...

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: ValidResource,
        *,
        if_match: int | None,
    ) -> tuple[StoredResource, bool]:
        """Write a new version; create it under this id if absent. Returns (version, created).
        The resource's contributor becomes the record's only when this call creates it."""
        ...

    def delete(self, resource_type: str, resource_id: str) -> StoredResource | None:
        """Mark deleted; None when there was nothing live to delete."""
        ...

    def read(self, resource_type: str, resource_id: str) -> StoredResource:
        """The current version; NotFound when absent, Gone when deleted."""
        ...

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredResource: ...

    def history(
        self,
        resource_type: str,
        resource_id: str,
        *,
        count: int,
        since: datetime | None = None,
        before_version: int | None = None,
    ) -> HistoryPage: ...

    def search(self, query: SearchQuery) -> SearchPage: ...

    def serialize(self, key: str) -> None:
        """Hold a lock on ``key`` until the unit of work ends (conditional create's check-then-
        write must not race another one)."""
        ...

    def write_many(self, resources: Sequence[ValidResource]) -> list[StoredResource]:
        """Batch ingest: create (no id) or create-or-update (with id) many resources at once."""
        ...


class UnitOfWorkStore(StoreSession, Protocol):
    """What the REST layer is handed: the operations, and atomic units of work."""

    def transaction(self) -> AbstractContextManager[StoreSession]: ...


class ResourceStore(UnitOfWorkStore, Protocol):
    """The raw store: also administration. Never handed to a route (see deps.request_store)."""

    def ping(self) -> None:
        """Raise ServiceUnavailable when the database cannot be reached."""
        ...

    def reencrypt(self, batch_size: int = 500) -> Iterator[int]:
        """Move rows under older keys to the active key; yields rows done per batch."""
        ...

    def reindex(self, batch_size: int = 500) -> Iterator[int]:
        """Derive every live resource's index rows afresh; yields rows done per batch."""
        ...

    def close(self) -> None: ...
