"""The store port: what every store (SQL, in-memory) offers, and the values it returns.

A store hands out *sessions*: ``store.transaction()`` is one atomic unit of work (a transaction
Bundle runs inside one); the convenience methods on the store each run in their own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gateway.store.query import SearchQuery


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


class StoreSession(Protocol):
    def create(
        self,
        resource: dict[str, Any],
        *,
        contributor: str | None = None,
        resource_id: str | None = None,
    ) -> StoredResource:
        """A new resource, under ``resource_id`` when given (a transaction assigns ids to its
        entries before it runs them), else a fresh id; Conflict when the id is taken."""
        ...

    def locate(self, resource_type: str, resource_id: str) -> Located | None:
        """The record's head and newest live version, in one lookup; None when absent."""
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
        resource: dict[str, Any],
        *,
        if_match: int | None,
        contributor: str | None = None,
    ) -> tuple[StoredResource, bool]:
        """Write a new version; create it under this id if absent. Returns (version, created).
        ``contributor`` becomes the resource's contributor only when this call creates it."""
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

    def write_many(
        self, resources: Sequence[dict[str, Any]], *, contributor: str | None = None
    ) -> list[StoredResource]:
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
