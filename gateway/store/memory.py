"""In-memory twin of the SQL store, for unit tests. Same port, same answers (the contract tests
hold it to that); nothing is encrypted because nothing leaves the process."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.clock import Clock
from gateway.errors import Conflict, Gone, PreconditionFailed, not_found
from gateway.store.port import (
    Candidate,
    Clause,
    Cursor,
    DateCriterion,
    HistoryPage,
    Located,
    SearchPage,
    SearchQuery,
    StoredResource,
    Visibility,
)
from gateway.store.query import clause_matches, date_matches
from gateway.store.records import PreparedVersion, new_id, prepare
from gateway.vocabulary.dates import stamp
from gateway.vocabulary.index import ANY_ACTOR_ENTRY, ANY_PATIENT_ENTRY, IndexEntry, extract
from gateway.vocabulary.registry import CONSENT_ACTOR, CONSENT_PATIENT, FACT_PARAM_NAMES
from gateway.write.admit import ValidResource, require_valid


@dataclass
class _Head:
    rid: int
    resource_type: str
    id: str
    contributor: str | None = None
    versions: list[StoredResource] = field(default_factory=list)
    index: list[IndexEntry] = field(default_factory=list)

    @property
    def current(self) -> StoredResource:
        return self.versions[-1]


@dataclass
class _State:
    heads: dict[tuple[str, str], _Head] = field(default_factory=dict)
    next_rid: int = 1


class MemoryStore:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._state = _State()
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[_MemorySession]:
        with self._lock:
            snapshot = copy.deepcopy(self._state)
            try:
                yield _MemorySession(self._state, self._clock)
            except BaseException:
                self._state.heads, self._state.next_rid = snapshot.heads, snapshot.next_rid
                raise

    def create(self, resource: ValidResource, *, resource_id: str | None = None) -> StoredResource:
        require_valid(resource)
        with self.transaction() as s:
            return s.create(resource, resource_id=resource_id)

    def locate(self, resource_type: str, resource_id: str) -> Located | None:
        with self._lock:
            return _MemorySession(self._state, self._clock).locate(resource_type, resource_id)

    def contributors(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        with self._lock:
            return _MemorySession(self._state, self._clock).contributors(keys)

    def consent_probe(self, patient_id: str, *, recorder: str, actor: tuple[str, str]) -> bool:
        with self._lock:
            return _MemorySession(self._state, self._clock).consent_probe(
                patient_id, recorder=recorder, actor=actor
            )

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: ValidResource,
        *,
        if_match: int | None,
    ) -> tuple[StoredResource, bool]:
        require_valid(resource)
        with self.transaction() as s:
            return s.update(resource_type, resource_id, resource, if_match=if_match)

    def delete(self, resource_type: str, resource_id: str) -> StoredResource | None:
        with self.transaction() as s:
            return s.delete(resource_type, resource_id)

    def read(self, resource_type: str, resource_id: str) -> StoredResource:
        with self._lock:
            return _MemorySession(self._state, self._clock).read(resource_type, resource_id)

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredResource:
        with self._lock:
            return _MemorySession(self._state, self._clock).vread(
                resource_type, resource_id, version_id
            )

    def history(
        self,
        resource_type: str,
        resource_id: str,
        *,
        count: int,
        since: datetime | None = None,
        before_version: int | None = None,
    ) -> HistoryPage:
        with self._lock:
            return _MemorySession(self._state, self._clock).history(
                resource_type, resource_id, count=count, since=since, before_version=before_version
            )

    def search(self, query: SearchQuery) -> SearchPage:
        with self._lock:
            return _MemorySession(self._state, self._clock).search(query)

    def write_many(self, resources: Sequence[ValidResource]) -> list[StoredResource]:
        for each in resources:
            require_valid(each)
        with self.transaction() as s:
            return s.write_many(resources)

    def serialize(self, key: str) -> None:
        """Outside a unit of work there is nothing to hold a lock for."""
        return

    def ping(self) -> None:
        return None

    def reencrypt(self, batch_size: int = 500) -> Iterator[int]:
        return iter(())

    def reindex(self, batch_size: int = 500) -> Iterator[int]:
        with self._lock:
            live = [h for h in self._state.heads.values() if not h.current.deleted]
            for head in live:
                head.index = extract(orjson.loads(head.current.body))
        return iter([len(live)] if live else [])

    def close(self) -> None:
        return None


class _MemorySession:
    def __init__(self, state: _State, clock: Clock) -> None:
        self._state = state
        self._clock = clock

    def serialize(self, key: str) -> None:
        return None  # the store's lock is held for the whole unit of work

    def _head(self, resource_type: str, resource_id: str) -> _Head | None:
        return self._state.heads.get((resource_type, resource_id))

    def read(self, resource_type: str, resource_id: str) -> StoredResource:
        head = self._head(resource_type, resource_id)
        if head is None:
            raise not_found(resource_type, resource_id)
        if head.current.deleted:
            raise Gone(f"Resource {resource_type}/{resource_id} was deleted")
        return head.current

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredResource:
        head = self._head(resource_type, resource_id)
        if head is None or not 1 <= version_id <= len(head.versions):
            raise not_found(resource_type, resource_id)
        version = head.versions[version_id - 1]
        if version.deleted:
            raise Gone(f"Version {version_id} of {resource_type}/{resource_id} is a deletion")
        return version

    def history(
        self,
        resource_type: str,
        resource_id: str,
        *,
        count: int,
        since: datetime | None = None,
        before_version: int | None = None,
    ) -> HistoryPage:
        head = self._head(resource_type, resource_id)
        if head is None:
            raise not_found(resource_type, resource_id)
        versions = [
            v
            for v in reversed(head.versions)
            if (since is None or v.last_updated >= since)
            and (before_version is None or v.version_id < before_version)
        ]
        page = versions[:count]
        return HistoryPage(page, page[-1].version_id if len(versions) > count and page else None)

    def _write(self, head: _Head, version: PreparedVersion) -> StoredResource:
        stored = StoredResource(
            version.resource_type,
            version.id,
            version.version_id,
            version.last_updated,
            False,
            version.body,
            head.contributor,
        )
        head.versions.append(stored)
        head.index = list(version.index)
        return stored

    def _new_head(self, resource_type: str, resource_id: str, contributor: str | None) -> _Head:
        if (resource_type, resource_id) in self._state.heads:
            raise Conflict("the write conflicts with a concurrent change; retry")
        head = _Head(self._state.next_rid, resource_type, resource_id, contributor)
        self._state.next_rid += 1
        self._state.heads[(resource_type, resource_id)] = head
        return head

    def create(self, resource: ValidResource, *, resource_id: str | None = None) -> StoredResource:
        require_valid(resource)
        version = prepare(resource.doc, resource_id or new_id(), 1, self._clock.now())
        head = self._new_head(version.resource_type, version.id, resource.contributor)
        return self._write(head, version)

    def locate(self, resource_type: str, resource_id: str) -> Located | None:
        head = self._head(resource_type, resource_id)
        if head is None:
            return None
        live = next(v for v in reversed(head.versions) if not v.deleted)
        return Located(head.current.version_id, head.current.deleted, head.contributor, live)

    def contributors(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        heads = ((key, self._head(*key)) for key in keys)
        return {key: head.contributor for key, head in heads if head is not None}

    def consent_probe(self, patient_id: str, *, recorder: str, actor: tuple[str, str]) -> bool:
        for head in self._state.heads.values():
            if head.resource_type != "Consent" or head.contributor != recorder:
                continue
            if head.current.deleted:
                continue
            index = set(head.index)
            actors = {
                IndexEntry(CONSENT_ACTOR, ref_type=actor[0], ref_id=actor[1]),
                ANY_ACTOR_ENTRY,
            }
            patients = {IndexEntry(CONSENT_PATIENT, ref_type="Patient", ref_id=patient_id)}
            if (
                index & actors
                and index & {*patients, ANY_PATIENT_ENTRY}
                and IndexEntry("status", code="active") in index
            ):
                return True
        return False

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: ValidResource,
        *,
        if_match: int | None,
    ) -> tuple[StoredResource, bool]:
        require_valid(resource)
        head = self._head(resource_type, resource_id)
        if head is None:
            if if_match is not None:
                raise PreconditionFailed(
                    f"If-Match given but {resource_type}/{resource_id} does not exist"
                )
            version = prepare(resource.doc, resource_id, 1, self._clock.now())
            head = self._new_head(resource_type, resource_id, resource.contributor)
            return self._write(head, version), True
        if if_match is not None and if_match != head.current.version_id:
            raise PreconditionFailed(
                f"version conflict: {resource_type}/{resource_id} is at version "
                f"{head.current.version_id}"
            )
        was_deleted = head.current.deleted
        version = prepare(resource.doc, resource_id, head.current.version_id + 1, self._clock.now())
        return self._write(head, version), was_deleted

    def delete(self, resource_type: str, resource_id: str) -> StoredResource | None:
        head = self._head(resource_type, resource_id)
        if head is None or head.current.deleted:
            return None
        now = self._clock.now().astimezone(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        marker = StoredResource(
            resource_type,
            resource_id,
            head.current.version_id + 1,
            now,
            True,
            b"",
            head.contributor,
        )
        head.versions.append(marker)
        head.index = []
        return marker

    def write_many(self, resources: Sequence[ValidResource]) -> list[StoredResource]:
        out = []
        seen: set[tuple[str, str]] = set()
        for resource in resources:
            if not resource.id:
                out.append(self.create(resource))
                continue
            key = (resource.resource_type, resource.id)
            if key in seen:
                raise Conflict("a batch names the same resource twice")
            seen.add(key)
            stored, _ = self.update(key[0], key[1], resource, if_match=None)
            out.append(stored)
        return out

    # -- search ------------------------------------------------------------------------------

    def _matches(self, head: _Head, clause: Clause) -> bool:
        if clause.name == "_id":
            return head.id in clause.ids
        if clause.name == "_lastUpdated":
            moment = stamp(head.current.last_updated)
            return any(
                date_matches(c, moment, moment)
                for c in clause.criteria
                if isinstance(c, DateCriterion)
            )
        return clause_matches(clause, head.index)

    def search(self, query: SearchQuery) -> SearchPage:
        hits = self._visible_among(
            query.visible_to,
            [
                h
                for h in self._state.heads.values()
                if h.resource_type == query.resource_type
                and not h.current.deleted
                and all(self._matches(h, c) for c in query.clauses)
            ],
            matches=True,
        )
        total = len(hits) if query.with_total else None
        if query.summary_count or query.count == 0:
            return SearchPage([], total)

        def key(h: _Head) -> tuple[Any, ...]:
            parts: list[Any] = [
                stamp(h.current.last_updated) if n == "_lastUpdated" else h.id
                for n, _ in query.sort
            ]
            return (*parts, h.rid)

        directions = [desc for _, desc in query.sort] + [False]
        ordered = sorted(hits, key=lambda h: _SortKey(key(h), directions))
        cursor = query.position()
        after = cursor.after if cursor else True
        if cursor is not None:
            mark = _SortKey(cursor.key, directions)
            if after:
                ordered = [h for h in ordered if _SortKey(key(h), directions) > mark]
            else:
                ordered = [h for h in ordered if _SortKey(key(h), directions) < mark]
                ordered = ordered[-(query.count + 1) :]
        if after:
            more = len(ordered) > query.count
            page = ordered[: query.count]
        else:
            more = len(ordered) > query.count
            page = ordered[-query.count :] if query.count else []
        next_cursor = prev_cursor = None
        if page:
            if (more and after) or not after:
                next_cursor = Cursor(key(page[-1]), after=True).encode()
            if cursor is not None and (after or more):
                prev_cursor = Cursor(key(page[0]), after=False).encode()
        included = self._included(query, page)
        return SearchPage([h.current for h in page], total, next_cursor, prev_cursor, included)

    def _visible_among(
        self, visibility: Visibility | None, heads: list[_Head], *, matches: bool = False
    ) -> list[_Head]:
        """The heads the requester may see, in their order: its own and the directory, and
        whatever ``visibility.reach`` releases of the rest (all of the rest is asked: no
        narrowing here, so the contract tests hold the SQL store's narrowing to this)."""
        if visibility is None:
            return heads
        others = [h for h in heads if not visibility.admits(h.resource_type, h.contributor)]
        asked = others
        if matches and visibility.reach is not None:
            # The reach's own criteria apply to search matches (not to includes), as in SQL.
            clauses = visibility.reach.clauses
            asked = [h for h in others if all(self._matches(h, c) for c in clauses)]
        if visibility.reach is None or not asked:
            released: AbstractSet[tuple[str, str]] = frozenset()
        else:
            released = visibility.reach.release(
                self,
                [
                    Candidate(
                        h.resource_type,
                        h.id,
                        h.contributor,
                        tuple(e for e in h.index if e.param in FACT_PARAM_NAMES),
                    )
                    for h in asked
                ],
            )
        hidden = {id(h) for h in others if (h.resource_type, h.id) not in released}
        return [h for h in heads if id(h) not in hidden]

    def _included(self, query: SearchQuery, page: list[_Head]) -> list[StoredResource]:
        targets: dict[tuple[str, str], _Head] = {}
        for inc in query.includes:
            for h in page:
                for e in h.index:
                    if e.param != inc.param or e.ref_type is None or e.ref_id is None:
                        continue
                    if inc.target_type and e.ref_type != inc.target_type:
                        continue
                    target = self._head(e.ref_type, e.ref_id)
                    if target is not None and not target.current.deleted:
                        targets[(e.ref_type, e.ref_id)] = target
        out: dict[tuple[str, str], StoredResource] = {
            (h.resource_type, h.id): h.current
            for h in self._visible_among(query.visible_to, list(targets.values()))
        }
        ids = {h.id for h in page}
        for inc in query.revincludes:
            sources = [
                other
                for other in sorted(self._state.heads.values(), key=lambda h: h.rid)
                if other.resource_type == inc.source_type
                and not other.current.deleted
                and any(
                    e.param == inc.param and e.ref_type == query.resource_type and e.ref_id in ids
                    for e in other.index
                )
            ]
            for other in self._visible_among(query.visible_to, sources):
                out[(other.resource_type, other.id)] = other.current
        return [r for k, r in out.items() if not (k[0] == query.resource_type and k[1] in ids)]


class _SortKey:
    """Orders sort keys column by column, each in its own direction."""

    __slots__ = ("directions", "key")

    def __init__(self, key: tuple[Any, ...], directions: list[bool]) -> None:
        self.key = key
        self.directions = directions

    def __lt__(self, other: _SortKey) -> bool:
        for mine, theirs, desc in zip(self.key, other.key, self.directions, strict=True):
            if mine != theirs:
                return bool(mine > theirs) if desc else bool(mine < theirs)
        return False

    def __gt__(self, other: _SortKey) -> bool:
        return other < self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SortKey) and self.key == other.key

    __hash__ = None  # type: ignore[assignment]
