"""The SQL store (SQLAlchemy 2 Core) for SQLite and PostgreSQL.

Every version is encrypted before it reaches the database; search runs on ``search_index`` and
decrypts only the rows of the page it returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Select,
    String,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    false,
    func,
    insert,
    literal,
    not_,
    null,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from gateway.clock import Clock
from gateway.errors import (
    Conflict,
    Gone,
    PreconditionFailed,
    ServiceUnavailable,
    not_found,
)
from gateway.keys import DecryptionError, FileKeyRing, KeyRing
from gateway.store.port import HistoryPage, Located, SearchPage, StoredResource
from gateway.store.query import (
    Candidate,
    Clause,
    ConsentReach,
    Cursor,
    DateCriterion,
    ReferenceCriterion,
    SearchQuery,
    StringCriterion,
    TokenCriterion,
    Visibility,
)
from gateway.store.records import PreparedVersion, aad, new_id, prepare
from gateway.store.schema import resource_versions as V
from gateway.store.schema import resources as R
from gateway.store.schema import search_index as SI
from gateway.store.searchparams import (
    CONSENT_ACTOR,
    CONSENT_PATIENT,
    FACT_PARAM_NAMES,
    IndexEntry,
    Kind,
    extract,
    stamp,
)

Timing = Callable[[str, float], None]


def _parse_stamp(value: str) -> datetime:
    return datetime.fromisoformat(value + "+00:00")


class SqlStore:
    def __init__(
        self,
        engine: Engine,
        keys: FileKeyRing | KeyRing,
        clock: Clock,
        *,
        on_timing: Timing | None = None,
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._clock = clock
        self._on_timing = on_timing
        self._local = threading.local() if engine.dialect.name == "sqlite" else None
        self._readers: list[Any] = []
        self._readers_lock = threading.Lock()
        self._sql = _DriverSql.for_dialect(engine.dialect.paramstyle)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def waits_on_network(self) -> bool:
        return self._engine.dialect.name != "sqlite"

    def _ring(self) -> KeyRing:
        return self._keys.current() if isinstance(self._keys, FileKeyRing) else self._keys

    def key_ring(self) -> KeyRing:
        """The key ring as it is now (the app derives its paging-token key from it)."""
        return self._ring()

    @contextmanager
    def _session(self, *, write: bool, op: str) -> Iterator[_SqlSession]:
        started = time.perf_counter()
        try:
            with self._engine.connect() as conn:
                if write:
                    conn = conn.execution_options(gateway_write=True)
                with conn.begin():
                    yield _SqlSession(conn, self._ring(), self._clock, self._sql)
        except IntegrityError as exc:
            raise Conflict("the write conflicts with a concurrent change; retry") from exc
        except OperationalError as exc:
            raise ServiceUnavailable("the database is unavailable") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise ServiceUnavailable("the database connection was lost") from exc
            raise
        finally:
            if self._on_timing is not None:
                self._on_timing(op, time.perf_counter() - started)

    @contextmanager
    def transaction(self) -> Iterator[_SqlSession]:
        with self._session(write=True, op="transaction") as session:
            yield session

    def create(
        self,
        resource: dict[str, Any],
        *,
        contributor: str | None = None,
        resource_id: str | None = None,
    ) -> StoredResource:
        with self._session(write=True, op="create") as s:
            return s.create(resource, contributor=contributor, resource_id=resource_id)

    def locate(self, resource_type: str, resource_id: str) -> Located | None:
        """The head and newest live version: one prepared statement on a reader connection,
        like ``read`` (every door that addresses a record by id starts here)."""
        row = self._driver_fetch("locate", self._sql.locate, (resource_type, resource_id))
        return _located(self._ring(), resource_type, resource_id, row)

    def consent_probe(self, patient_id: str, *, recorder: str, actor: tuple[str, str]) -> bool:
        row = self._driver_fetch(
            "consent_probe", self._sql.consent_probe, (patient_id, recorder, actor[0], actor[1])
        )
        return row is not None

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        *,
        if_match: int | None,
        contributor: str | None = None,
    ) -> tuple[StoredResource, bool]:
        with self._session(write=True, op="update") as s:
            return s.update(
                resource_type, resource_id, resource, if_match=if_match, contributor=contributor
            )

    def delete(self, resource_type: str, resource_id: str) -> StoredResource | None:
        with self._session(write=True, op="delete") as s:
            return s.delete(resource_type, resource_id)

    def read(self, resource_type: str, resource_id: str) -> StoredResource:
        """The hot path: one prepared statement on a pooled driver connection (no SQLAlchemy
        statement building, no explicit transaction: one SELECT is its own snapshot)."""
        row = self._driver_fetch("read", self._sql.read_current, (resource_type, resource_id))
        if row is None:
            raise not_found(resource_type, resource_id)
        version_id, last_updated, deleted, key_id, payload, contributor = row
        if deleted:
            raise Gone(f"Resource {resource_type}/{resource_id} was deleted")
        return _open(
            self._ring(),
            resource_type,
            resource_id,
            version_id,
            last_updated,
            key_id,
            payload,
            contributor,
        )

    def _driver_fetch(self, op: str, statement: str, params: tuple[Any, ...]) -> Any:
        """One row of a prepared statement sent straight to the driver (or None)."""
        started = time.perf_counter()
        dbapi = self._engine.dialect.dbapi
        assert dbapi is not None
        try:
            return self._fetch_one(statement, params)
        except dbapi.Error as exc:
            raise ServiceUnavailable("the database is unavailable") from exc
        finally:
            if self._on_timing is not None:
                self._on_timing(op, time.perf_counter() - started)

    def _fetch_one(self, statement: str, params: tuple[Any, ...]) -> Any:
        if self._local is not None:
            # SQLite: each thread keeps one reader connection (autocommit, so one SELECT is its
            # own snapshot); a pool checkout would cost as much as the query.
            conn: Any = getattr(self._local, "conn", None)
            if conn is None:
                # Detached: owned by this thread, not counted against (or returned to) the pool.
                fairy = self._engine.raw_connection()
                fairy.detach()
                conn = self._local.conn = fairy.dbapi_connection
                with self._readers_lock:
                    self._readers.append(conn)
            cursor = conn.cursor()
            try:
                cursor.execute(statement, params)
                return cursor.fetchone()
            finally:
                cursor.close()
        conn = self._engine.raw_connection()
        try:
            cursor = conn.cursor()
            cursor.execute(statement, params)
            row = cursor.fetchone()
            cursor.close()
            return row
        finally:
            conn.close()

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredResource:
        with self._session(write=False, op="vread") as s:
            return s.vread(resource_type, resource_id, version_id)

    def history(
        self,
        resource_type: str,
        resource_id: str,
        *,
        count: int,
        since: datetime | None = None,
        before_version: int | None = None,
    ) -> HistoryPage:
        with self._session(write=False, op="history") as s:
            return s.history(
                resource_type, resource_id, count=count, since=since, before_version=before_version
            )

    def search(self, query: SearchQuery) -> SearchPage:
        with self._session(write=False, op="search") as s:
            return s.search(query)

    def write_many(
        self, resources: Sequence[dict[str, Any]], *, contributor: str | None = None
    ) -> list[StoredResource]:
        with self._session(write=True, op="write_many") as s:
            return s.write_many(resources, contributor=contributor)

    def serialize(self, key: str) -> None:
        """Outside a unit of work there is nothing to hold a lock for."""
        return

    def ping(self) -> None:
        with self._session(write=False, op="ping") as s:
            s.conn.execute(select(literal(1))).scalar_one()

    def reencrypt(self, batch_size: int = 500) -> Iterator[int]:
        """Re-encrypt versions held under older keys with the active key, batch by batch."""
        while True:
            with self._session(write=True, op="reencrypt") as s:
                done = s.reencrypt_batch(batch_size)
            if not done:
                return
            yield done

    def reindex(self, batch_size: int = 500) -> Iterator[int]:
        """Derive the search index of every current version afresh (after the extraction
        plan changed, e.g. new consent-fact rows), batch by batch; yields rows done."""
        after = 0
        while True:
            with self._session(write=True, op="reindex") as s:
                after, done = s.reindex_batch(after, batch_size)
            if not done:
                return
            yield done

    def count_live(self) -> int:
        with self._session(write=False, op="count") as s:
            count: int = s.conn.execute(
                select(func.count()).select_from(R).where(R.c.deleted == false())
            ).scalar_one()
            return count

    def count_by_key(self) -> dict[str, int]:
        with self._session(write=False, op="keys") as s:
            rows = s.conn.execute(
                select(V.c.key_id, func.count()).where(V.c.key_id.is_not(None)).group_by(V.c.key_id)
            )
            return {str(k): int(n) for k, n in rows}

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local() if self._local is not None else None
        self._engine.dispose()


_CURRENT = (
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


class _SqlSession:
    def __init__(self, conn: Connection, ring: KeyRing, clock: Clock, sql: _DriverSql) -> None:
        self.conn = conn
        self._sql = sql
        self._ring = ring
        self._clock = clock
        self._postgres = conn.dialect.name == "postgresql"

    # -- reading -----------------------------------------------------------------------------

    def _decrypt(self, row: Any) -> StoredResource:
        if row.deleted:
            return StoredResource(
                row.resource_type,
                row.id,
                row.version_id,
                _parse_stamp(row.last_updated),
                True,
                b"",
                row.contributor,
            )
        return _open(
            self._ring,
            row.resource_type,
            row.id,
            row.version_id,
            row.last_updated,
            row.key_id,
            row.payload,
            row.contributor,
        )

    def read(self, resource_type: str, resource_id: str) -> StoredResource:
        row = self.conn.execute(
            _CURRENT.where(R.c.resource_type == resource_type, R.c.id == resource_id)
        ).first()
        if row is None:
            raise not_found(resource_type, resource_id)
        if row.deleted:
            raise Gone(f"Resource {resource_type}/{resource_id} was deleted")
        return self._decrypt(row)

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredResource:
        row = self.conn.execute(
            select(
                R.c.resource_type,
                R.c.id,
                V.c.version_id,
                V.c.last_updated,
                V.c.deleted,
                V.c.key_id,
                V.c.payload,
                R.c.contributor,
            )
            .select_from(R)
            .join(V, V.c.rid == R.c.rid)
            .where(
                R.c.resource_type == resource_type,
                R.c.id == resource_id,
                V.c.version_id == version_id,
            )
        ).first()
        if row is None:
            # The same answer as for an id that never existed (a version count is a fact too).
            raise not_found(resource_type, resource_id)
        if row.deleted:
            raise Gone(f"Version {version_id} of {resource_type}/{resource_id} is a deletion")
        return self._decrypt(row)

    def history(
        self,
        resource_type: str,
        resource_id: str,
        *,
        count: int,
        since: datetime | None = None,
        before_version: int | None = None,
    ) -> HistoryPage:
        head = self.conn.execute(
            select(R.c.rid, R.c.contributor).where(
                R.c.resource_type == resource_type, R.c.id == resource_id
            )
        ).first()
        if head is None:
            raise not_found(resource_type, resource_id)
        q = (
            select(
                literal(resource_type).label("resource_type"),
                literal(resource_id).label("id"),
                V.c.version_id,
                V.c.last_updated,
                V.c.deleted,
                V.c.key_id,
                V.c.payload,
                literal(head.contributor, String).label("contributor"),
            )
            .where(V.c.rid == head.rid)
            .order_by(V.c.version_id.desc())
            .limit(count + 1)
        )
        if since is not None:
            q = q.where(V.c.last_updated >= stamp(since))
        if before_version is not None:
            q = q.where(V.c.version_id < before_version)
        rows = self.conn.execute(q).all()
        versions = [self._decrypt(r) for r in rows[:count]]
        more = len(rows) > count and versions
        return HistoryPage(versions, versions[-1].version_id if more else None)

    def serialize(self, key: str) -> None:
        # SQLite writers already hold the database lock (BEGIN IMMEDIATE).
        if self._postgres:
            self.conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(key))))

    def _rid(self, resource_type: str, resource_id: str) -> int | None:
        return self.conn.execute(
            select(R.c.rid).where(R.c.resource_type == resource_type, R.c.id == resource_id)
        ).scalar_one_or_none()

    # -- writing -----------------------------------------------------------------------------

    def _store_version(self, rid: int, version: PreparedVersion, *, replace_index: bool) -> None:
        key_id, blob = self._ring.encrypt(
            version.body, aad(version.resource_type, version.id, version.version_id)
        )
        self.conn.execute(
            insert(V).values(
                rid=rid,
                version_id=version.version_id,
                last_updated=stamp(version.last_updated),
                deleted=False,
                key_id=key_id,
                payload=blob,
            )
        )
        if replace_index:
            self.conn.execute(delete(SI).where(SI.c.rid == rid))
        if version.index:
            self.conn.exec_driver_sql(
                self._sql.insert_index, _index_tuples(rid, version.resource_type, version.index)
            )

    def _insert_head(self, version: PreparedVersion, contributor: str | None) -> int:
        rid: int = self.conn.execute(
            insert(R)
            .values(
                resource_type=version.resource_type,
                id=version.id,
                version_id=1,
                last_updated=stamp(version.last_updated),
                deleted=False,
                contributor=contributor,
            )
            .returning(R.c.rid)
        ).scalar_one()
        self._store_version(rid, version, replace_index=False)
        return rid

    def create(
        self,
        resource: dict[str, Any],
        *,
        contributor: str | None = None,
        resource_id: str | None = None,
    ) -> StoredResource:
        version = prepare(resource, resource_id or new_id(), 1, self._clock.now())
        if resource_id is not None and self._rid(version.resource_type, resource_id) is not None:
            raise Conflict("the resource id is already taken")
        self._insert_head(version, contributor)
        return _stored(version, contributor)

    def locate(self, resource_type: str, resource_id: str) -> Located | None:
        row = self.conn.exec_driver_sql(self._sql.locate, (resource_type, resource_id)).first()
        return _located(self._ring, resource_type, resource_id, row)

    def consent_probe(self, patient_id: str, *, recorder: str, actor: tuple[str, str]) -> bool:
        params = (patient_id, recorder, actor[0], actor[1])
        return self.conn.exec_driver_sql(self._sql.consent_probe, params).first() is not None

    def _lock_head(self, resource_type: str, resource_id: str) -> Any:
        q = select(R.c.rid, R.c.version_id, R.c.deleted, R.c.contributor).where(
            R.c.resource_type == resource_type, R.c.id == resource_id
        )
        if self._postgres:
            q = q.with_for_update()
        return self.conn.execute(q).first()

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        *,
        if_match: int | None,
        contributor: str | None = None,
    ) -> tuple[StoredResource, bool]:
        head = self._lock_head(resource_type, resource_id)
        now = self._clock.now()
        if head is None:
            if if_match is not None:
                raise PreconditionFailed(
                    f"If-Match given but {resource_type}/{resource_id} does not exist"
                )
            version = prepare(resource, resource_id, 1, now)
            self._insert_head(version, contributor)
            return _stored(version, contributor), True
        if if_match is not None and if_match != head.version_id:
            raise PreconditionFailed(
                f"version conflict: {resource_type}/{resource_id} is at version {head.version_id}"
            )
        version = prepare(resource, resource_id, head.version_id + 1, now)
        self._advance_head(head, version.version_id, version.last_updated, deleted=False)
        self._store_version(head.rid, version, replace_index=True)
        return _stored(version, head.contributor), bool(head.deleted)

    def _advance_head(self, head: Any, version_id: int, moment: datetime, *, deleted: bool) -> None:
        # The version guard turns a lost race on SQLite-less-locking paths into a clean conflict.
        result = self.conn.execute(
            update(R)
            .where(R.c.rid == head.rid, R.c.version_id == head.version_id)
            .values(version_id=version_id, last_updated=stamp(moment), deleted=deleted)
        )
        if result.rowcount != 1:
            raise Conflict("the resource changed during the write; retry")

    def delete(self, resource_type: str, resource_id: str) -> StoredResource | None:
        head = self._lock_head(resource_type, resource_id)
        if head is None or head.deleted:
            return None
        now = self._clock.now().astimezone(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        version_id = head.version_id + 1
        self._advance_head(head, version_id, now, deleted=True)
        self.conn.execute(
            insert(V).values(
                rid=head.rid,
                version_id=version_id,
                last_updated=stamp(now),
                deleted=True,
                key_id=None,
                payload=None,
            )
        )
        self.conn.execute(delete(SI).where(SI.c.rid == head.rid))
        return StoredResource(
            resource_type, resource_id, version_id, now, True, b"", head.contributor
        )

    def write_many(
        self, resources: Sequence[dict[str, Any]], *, contributor: str | None = None
    ) -> list[StoredResource]:
        """The batch path: a handful of statements for the whole batch, whatever its size."""
        now = self._clock.now()
        with_ids = [r for r in resources if r.get("id")]
        heads: dict[tuple[str, str], Any] = {}
        if with_ids:
            keys = list({(r["resourceType"], r["id"]) for r in with_ids})
            for chunk_start in range(0, len(keys), 500):
                chunk = keys[chunk_start : chunk_start + 500]
                for row in self.conn.execute(
                    select(
                        R.c.rid,
                        R.c.resource_type,
                        R.c.id,
                        R.c.version_id,
                        R.c.deleted,
                        R.c.contributor,
                    ).where(tuple_(R.c.resource_type, R.c.id).in_(chunk))
                ):
                    heads[(row.resource_type, row.id)] = row
        fresh: list[PreparedVersion] = []
        existing: list[tuple[Any, PreparedVersion]] = []
        in_order: list[tuple[PreparedVersion, str | None]] = []
        seen: set[tuple[str, str]] = set()
        for resource in resources:
            rid_key = (resource["resourceType"], resource.get("id") or "")
            if rid_key in seen:
                raise Conflict("a batch names the same resource twice")
            head = heads.get(rid_key)
            if head is None:
                version = prepare(resource, resource.get("id") or new_id(), 1, now)
                fresh.append(version)
                in_order.append((version, contributor))
            else:
                version = prepare(resource, head.id, head.version_id + 1, now)
                existing.append((head, version))
                in_order.append((version, head.contributor))
            seen.add((version.resource_type, version.id))
        rids: dict[tuple[str, str], int] = {}
        if fresh:
            heads_rows: list[dict[str, object]] = [
                {
                    "resource_type": v.resource_type,
                    "id": v.id,
                    "version_id": 1,
                    "last_updated": stamp(v.last_updated),
                    "deleted": False,
                    "contributor": contributor,
                }
                for v in fresh
            ]
            if self._postgres:
                rows = self.conn.execute(
                    insert(R).returning(
                        R.c.rid, R.c.resource_type, R.c.id, sort_by_parameter_order=True
                    ),
                    heads_rows,
                )
                rids = {(r.resource_type, r.id): r.rid for r in rows}
            else:
                # SQLite would run RETURNING row by row; this writer holds the database lock
                # (BEGIN IMMEDIATE), so it numbers the rows itself and inserts them in one go.
                last = self.conn.execute(select(func.coalesce(func.max(R.c.rid), 0))).scalar_one()
                for rid, (head_row, v) in enumerate(zip(heads_rows, fresh, strict=True), last + 1):
                    head_row["rid"] = rid
                    rids[(v.resource_type, v.id)] = rid
                self.conn.execute(insert(R), heads_rows)
        for head, version in existing:
            self._advance_head(head, version.version_id, version.last_updated, deleted=False)
            rids[(version.resource_type, version.id)] = head.rid
        if existing:
            self.conn.execute(delete(SI).where(SI.c.rid.in_([h.rid for h, _ in existing])))
        versions = [*fresh, *(v for _, v in existing)]
        version_rows: list[tuple[Any, ...]] = []
        index_rows: list[tuple[Any, ...]] = []
        for v in versions:
            rid = rids[(v.resource_type, v.id)]
            key_id, blob = self._ring.encrypt(v.body, aad(v.resource_type, v.id, v.version_id))
            version_rows.append((rid, v.version_id, stamp(v.last_updated), False, key_id, blob))
            index_rows.extend(_index_tuples(rid, v.resource_type, v.index))
        # Straight to the driver's executemany: per-row parameter building in SQLAlchemy cost
        # more than the database's own work for a batch (measured).
        self.conn.exec_driver_sql(self._sql.insert_versions, version_rows)
        if index_rows:
            self.conn.exec_driver_sql(self._sql.insert_index, index_rows)
        return [_stored(v, who) for v, who in in_order]

    def reindex_batch(self, after_rid: int, batch_size: int) -> tuple[int, int]:
        """Re-extract the index of the live resources after ``after_rid``; returns the last
        rid done and how many were done."""
        rows = self.conn.execute(
            _CURRENT.where(R.c.rid > after_rid, R.c.deleted == false())
            .order_by(R.c.rid)
            .limit(batch_size)
        ).all()
        if not rows:
            return after_rid, 0
        rids = [row.rid for row in rows]
        self.conn.execute(delete(SI).where(SI.c.rid.in_(rids)))
        index_rows: list[tuple[Any, ...]] = []
        for row in rows:
            body = orjson.loads(self._decrypt(row).body)
            index_rows.extend(_index_tuples(row.rid, row.resource_type, extract(body)))
        if index_rows:
            self.conn.exec_driver_sql(self._sql.insert_index, index_rows)
        return rids[-1], len(rows)

    def reencrypt_batch(self, batch_size: int) -> int:
        rows = self.conn.execute(
            select(R.c.resource_type, R.c.id, V.c.rid, V.c.version_id, V.c.key_id, V.c.payload)
            .select_from(V)
            .join(R, R.c.rid == V.c.rid)
            .where(V.c.key_id.is_not(None), V.c.key_id != self._ring.active)
            .limit(batch_size)
        ).all()
        for row in rows:
            associated = aad(row.resource_type, row.id, row.version_id)
            plain = self._ring.decrypt(row.key_id, row.payload, associated)
            key_id, blob = self._ring.encrypt(plain, associated)
            self.conn.execute(
                update(V)
                .where(V.c.rid == row.rid, V.c.version_id == row.version_id)
                .values(key_id=key_id, payload=blob)
            )
        return len(rows)

    # -- search ------------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchPage:
        where = [R.c.resource_type == query.resource_type, R.c.deleted == false()]
        where.extend(_clause_sql(query.resource_type, c) for c in query.clauses)
        if query.visible_to is not None:
            where.append(self._visible_where(query.visible_to, where, query.resource_type))
        total = (
            self.conn.execute(select(func.count()).select_from(R).where(*where)).scalar_one()
            if query.with_total
            else None
        )
        if query.summary_count or query.count == 0:
            return SearchPage([], total)
        columns = _sort_columns(query)
        cursor = query.position()
        after = cursor.after if cursor else True
        page_q = _CURRENT.where(*where)
        if cursor is not None:
            page_q = page_q.where(_keyset(columns, cursor))
        order = [(col.desc() if desc != (not after) else col.asc()) for col, desc in columns]
        rows = list(self.conn.execute(page_q.order_by(*order).limit(query.count + 1)).all())
        more = len(rows) > query.count
        rows = rows[: query.count]
        if not after:
            rows.reverse()
        ring = self._ring
        # Page rows are live (deleted ones are filtered out): unpack and open them directly.
        matches = [
            _open(ring, rtype, rid_, version, updated, key_id, payload, who)
            for _, rtype, rid_, version, updated, _, key_id, payload, who in rows
        ]
        next_cursor = prev_cursor = None
        if rows:
            if (more and after) or not after:
                next_cursor = Cursor(_row_key(rows[-1], query), after=True).encode()
            if cursor is not None and (after or more):
                prev_cursor = Cursor(_row_key(rows[0], query), after=False).encode()
        included = self._included(query, [r.rid for r in rows], [r.id for r in rows])
        return SearchPage(matches, total, next_cursor, prev_cursor, included)

    def _visible_where(
        self,
        visibility: Visibility,
        where: Sequence[ColumnElement[bool]],
        narrow_to: str | None = None,
    ) -> ColumnElement[bool]:
        """The term that keeps, among the rows ``where`` selects, those the requester may see:
        its own and the directory, plus the rows ``visibility.reach`` releases. Those are
        decided here, before the count and the page are read, so that totals and paging count
        only what may be seen. ``narrow_to`` (a resource type) applies ``ConsentReach``'s
        narrowing first; includes name their few rows exactly and need none."""
        own = _visible_sql(visibility)
        reach = visibility.reach
        if reach is None:
            return own
        candidates = [*where, _not_visible_sql(visibility)]
        if narrow_to is not None:
            candidates.extend(_clause_sql(narrow_to, c) for c in reach.clauses)
        if narrow_to is not None and narrow_to not in reach.open_types:
            patients = self._consenting_patients(reach)
            if not patients:
                return own
            candidates.append(self._of_patients(narrow_to, patients))
        admitted = self._admitted(reach, candidates)
        return or_(own, self._in_array(R.c.rid, admitted)) if admitted else own

    def _consenting_patients(self, reach: ConsentReach) -> list[str]:
        """Patients with an active Consent naming ``reach.actor`` (at any depth): the only ones
        whose records a Consent could release to it. Read first, on its own, so that the
        narrowing is one plain lookup whatever the planner thinks of the index's statistics
        (a correlated version ran once per index row on PostgreSQL)."""
        actor_type, actor_id = reach.actor
        bound = {"actor_type": actor_type, "actor_id": actor_id}
        return list(self.conn.execute(_CONSENTING_PATIENTS, bound).scalars())

    def _of_patients(self, resource_type: str, patients: list[str]) -> ColumnElement[bool]:
        """Rows of ``resource_type`` that belong to one of ``patients`` (a Patient: itself)."""
        if resource_type == "Patient":
            return self._in_array(R.c.id, patients)
        rows = select(SI.c.rid).where(
            SI.c.resource_type == resource_type, SI.c.param == CONSENT_PATIENT,
            SI.c.ref_type == "Patient", self._in_array(SI.c.ref_id, patients),
        )  # fmt: skip
        return R.c.rid.in_(rows)

    def _admitted(self, reach: ConsentReach, where: Sequence[ColumnElement[bool]]) -> list[int]:
        """Row ids of the candidates ``where`` selects that ``reach.release`` releases, decided
        from their consent-fact index rows (nothing is decrypted)."""
        facts = and_(SI.c.rid == R.c.rid, SI.c.param.in_(sorted(FACT_PARAM_NAMES)))
        # In IndexEntry's order (text and raw are not facts: null), so each is one tuple.
        row = (
            SI.c.param, SI.c.system, SI.c.code, null(), null(), SI.c.ref_type, SI.c.ref_id,
            SI.c.low, SI.c.high,
        )  # fmt: skip
        # One row per candidate, its fact rows as one JSON array: per-row overhead in the
        # driver and SQLAlchemy cost more than the query itself (measured).
        aggregated: ColumnElement[Any]
        if self._postgres:
            # as text, so that orjson parses it rather than the driver's json module
            aggregated = cast(func.json_agg(func.json_build_array(*row)), Text)
        else:
            aggregated = func.json_group_array(func.json_array(*row))
        rows = self.conn.execute(
            select(R.c.rid, R.c.resource_type, R.c.id, R.c.contributor, aggregated)
            .select_from(R.outerjoin(SI, facts))
            .where(*where)
            .group_by(R.c.rid, R.c.resource_type, R.c.id, R.c.contributor)
        )
        candidates: dict[int, Candidate] = {}
        for rid, rtype, rid_, who, packed in rows:
            values = orjson.loads(packed)
            candidates[rid] = Candidate(
                rtype,
                rid_,
                who,
                tuple(map(IndexEntry._make, values)) if values[0][0] is not None else (),
            )
        if not candidates:
            return []
        released = reach.release(self, list(candidates.values()))
        return [rid for rid, c in candidates.items() if c.key in released]

    def _in_array(
        self, column: ColumnElement[Any], values: list[int] | list[str]
    ) -> ColumnElement[bool]:
        """``column IN (...)`` with the values as one parameter (a JSON array on SQLite, an
        array on PostgreSQL): a search may admit more rows than a statement may have
        parameters, and one parameter keeps the statement cacheable."""
        if self._postgres:
            element = BigInteger() if values and isinstance(values[0], int) else String()
            return column == any_(bindparam(None, values, type_=ARRAY(element)))
        array = func.json_each(orjson.dumps(values).decode()).table_valued("value")
        return column.in_(select(array.c.value))

    def _included(
        self, query: SearchQuery, rids: list[int], ids: list[str]
    ) -> list[StoredResource]:
        if not rids or not (query.includes or query.revincludes):
            return []
        vis = query.visible_to
        wanted: dict[tuple[str, str], None] = {}
        for inc in query.includes:
            q = select(SI.c.ref_type, SI.c.ref_id).where(
                SI.c.rid.in_(rids), SI.c.param == inc.param, SI.c.ref_type.is_not(None)
            )
            if inc.target_type:
                q = q.where(SI.c.ref_type == inc.target_type)
            for ref_type, ref_id in self.conn.execute(q):
                wanted[(ref_type, ref_id)] = None
        out: dict[tuple[str, str], StoredResource] = {}
        if wanted:
            for chunk_start in range(0, len(wanted), 500):
                chunk = list(wanted)[chunk_start : chunk_start + 500]
                where = [tuple_(R.c.resource_type, R.c.id).in_(chunk), R.c.deleted == false()]
                if vis is not None:
                    where.append(self._visible_where(vis, where))
                for row in self.conn.execute(_CURRENT.where(*where)):
                    out[(row.resource_type, row.id)] = self._decrypt(row)
        for inc in query.revincludes:
            sub = select(SI.c.rid).where(
                SI.c.resource_type == inc.source_type,
                SI.c.param == inc.param,
                SI.c.ref_type == query.resource_type,
                SI.c.ref_id.in_(ids),
            )
            where = [R.c.rid.in_(sub), R.c.deleted == false()]
            if vis is not None:
                where.append(self._visible_where(vis, where))
            for row in self.conn.execute(_CURRENT.where(*where).order_by(R.c.rid)):
                out[(row.resource_type, row.id)] = self._decrypt(row)
        page = {(query.resource_type, i) for i in ids}
        return [res for key, res in out.items() if key not in page]


def _consenting_patients_sql() -> Select[Any]:
    consent_rows = SI.c.resource_type == "Consent"
    naming = select(SI.c.rid).where(
        consent_rows, SI.c.param == CONSENT_ACTOR, SI.c.ref_type == bindparam("actor_type"),
        SI.c.ref_id == bindparam("actor_id"),
    )  # fmt: skip
    active = select(SI.c.rid).where(consent_rows, SI.c.param == "status", SI.c.code == "active")
    return (
        select(SI.c.ref_id)
        .distinct()
        .where(
            consent_rows, SI.c.param == CONSENT_PATIENT, SI.c.ref_type == "Patient",
            SI.c.rid.in_(naming), SI.c.rid.in_(active),
        )
    )  # fmt: skip


# Built once: it runs on every search under consent.
_CONSENTING_PATIENTS = _consenting_patients_sql()


def _visible_sql(visibility: Visibility) -> ColumnElement[bool]:
    """SQL for ``Visibility.admits``; the two must agree (contract tests)."""
    return or_(
        R.c.contributor == visibility.partner_id,
        and_(
            R.c.contributor.is_(None),
            R.c.resource_type.in_(sorted(visibility.directory_types)),
        ),
    )


def _not_visible_sql(visibility: Visibility) -> ColumnElement[bool]:
    """``not Visibility.admits``, written out: negating ``_visible_sql`` would be NULL (and so
    never true) for a row without contributor."""
    return and_(
        or_(R.c.contributor.is_(None), R.c.contributor != visibility.partner_id),
        not_(
            and_(
                R.c.contributor.is_(None),
                R.c.resource_type.in_(sorted(visibility.directory_types)),
            )
        ),
    )


def _open(
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
        resource_type, resource_id, version_id, _parse_stamp(last_updated), False, body, contributor
    )


def _located(ring: KeyRing, resource_type: str, resource_id: str, row: Any) -> Located | None:
    if row is None:
        return None
    head_version, deleted, contributor, version_id, last_updated, key_id, payload = row
    live = _open(
        ring, resource_type, resource_id, version_id, last_updated, key_id, payload, contributor
    )
    return Located(head_version, bool(deleted), contributor, live)


def _stored(v: PreparedVersion, contributor: str | None) -> StoredResource:
    return StoredResource(
        v.resource_type, v.id, v.version_id, v.last_updated, False, v.body, contributor
    )


def _index_tuples(
    rid: int, resource_type: str, entries: Sequence[IndexEntry]
) -> list[tuple[Any, ...]]:
    """Rows for ``insert_index``: an IndexEntry is already the columns in order."""
    return [(rid, resource_type, *e) for e in entries]


@dataclass(frozen=True, slots=True)
class _DriverSql:
    """Statements sent straight to the driver, in its placeholder style. Only placeholders are
    interpolated; every value travels as a parameter."""

    read_current: str
    locate: str
    consent_probe: str
    insert_versions: str
    insert_index: str

    @classmethod
    def for_dialect(cls, paramstyle: str) -> _DriverSql:
        def marks(n: int) -> str:
            return ", ".join(["?" if paramstyle == "qmark" else "%s"] * n)

        return cls(
            read_current=(
                "SELECT r.version_id, r.last_updated, r.deleted, v.key_id, v.payload, "  # noqa: S608
                "r.contributor "
                "FROM resources r JOIN resource_versions v "
                "ON v.rid = r.rid AND v.version_id = r.version_id "
                f"WHERE r.resource_type = {marks(1)} AND r.id = {marks(1)}"
            ),
            # The head, and its newest version with a body (a deletion marker has none).
            locate=(
                "SELECT r.version_id, r.deleted, r.contributor, v.version_id, "  # noqa: S608
                "v.last_updated, v.key_id, v.payload "
                "FROM resources r JOIN resource_versions v "
                "ON v.rid = r.rid AND v.payload IS NOT NULL "
                f"WHERE r.resource_type = {marks(1)} AND r.id = {marks(1)} "
                "ORDER BY v.version_id DESC LIMIT 1"
            ),
            # Led by the patient's Consents (a handful; none for the id of an absent record, and
            # never all the Consents that name a busy recipient), then narrowed to the
            # recorder's active ones that name the actor (or an actor that cannot be read).
            consent_probe=(
                "SELECT 1 FROM search_index p JOIN resources c ON c.rid = p.rid "  # noqa: S608
                "WHERE p.resource_type = 'Consent' AND p.param = '_consent-patient' "
                f"AND p.ref_id IN ({marks(1)}, '*') AND p.ref_type = 'Patient' "
                f"AND c.contributor = {marks(1)} AND NOT c.deleted "
                "AND EXISTS (SELECT 1 FROM search_index a WHERE a.rid = p.rid "
                "AND a.param = '_consent-actor' "
                f"AND ((a.ref_type = {marks(1)} AND a.ref_id = {marks(1)}) "
                "OR (a.ref_type = '*' AND a.ref_id = '*'))) "
                "AND EXISTS (SELECT 1 FROM search_index s WHERE s.rid = p.rid "
                "AND s.param = 'status' AND s.code = 'active') LIMIT 1"
            ),
            insert_versions=(
                "INSERT INTO resource_versions "  # noqa: S608
                "(rid, version_id, last_updated, deleted, key_id, payload) "
                f"VALUES ({marks(6)})"
            ),
            insert_index=(
                "INSERT INTO search_index (rid, resource_type, param, system, code, text, raw, "  # noqa: S608
                f"ref_type, ref_id, low, high) VALUES ({marks(11)})"
            ),
        )


def _sort_columns(query: SearchQuery) -> list[tuple[Any, bool]]:
    cols: list[tuple[Any, bool]] = []
    for name, desc in query.sort:
        cols.append((R.c.last_updated if name == "_lastUpdated" else R.c.id, desc))
    cols.append((R.c.rid, False))
    return cols


def _row_key(row: Any, query: SearchQuery) -> tuple[Any, ...]:
    key: list[Any] = [row.last_updated if n == "_lastUpdated" else row.id for n, _ in query.sort]
    key.append(row.rid)
    return tuple(key)


def _keyset(columns: list[tuple[Any, bool]], cursor: Cursor) -> ColumnElement[bool]:
    """Rows strictly after (or before) the cursor in the sort order, mixed directions allowed."""
    alternatives = []
    for i, (col, desc) in enumerate(columns):
        forward = desc != (not cursor.after)  # True: "comes later" means smaller
        step = col < cursor.key[i] if forward else col > cursor.key[i]
        equal_prefix = [c == cursor.key[j] for j, (c, _) in enumerate(columns[:i])]
        alternatives.append(and_(*equal_prefix, step))
    return or_(*alternatives)


def _clause_sql(resource_type: str, clause: Clause) -> ColumnElement[bool]:
    if clause.name == "_id":
        return R.c.id.in_(clause.ids)
    if clause.name == "_lastUpdated":
        return or_(
            *(
                _date_sql(c, R.c.last_updated, R.c.last_updated)
                for c in clause.criteria
                if isinstance(c, DateCriterion)
            )
        )
    rows_of_param = select(SI.c.rid).where(
        SI.c.resource_type == resource_type, SI.c.param == clause.name
    )
    if clause.missing is not None:
        present = R.c.rid.in_(rows_of_param)
        return ~present if clause.missing else present
    alternatives = [_criterion_sql(clause, c) for c in clause.criteria]
    return R.c.rid.in_(rows_of_param.where(or_(*alternatives)))


def _criterion_sql(clause: Clause, c: Any) -> ColumnElement[bool]:
    if isinstance(c, TokenCriterion):
        parts = []
        if c.code is not None:
            parts.append(SI.c.code == c.code)
        if c.system == "":
            parts.append(SI.c.system.is_(None))
        elif c.system is not None:
            parts.append(SI.c.system == c.system)
        return and_(true(), *parts)
    if isinstance(c, ReferenceCriterion):
        if c.ref_type is None:
            return SI.c.ref_id == c.ref_id
        return and_(SI.c.ref_id == c.ref_id, SI.c.ref_type == c.ref_type)
    if isinstance(c, DateCriterion):
        return _date_sql(c, SI.c.low, SI.c.high)
    assert isinstance(c, StringCriterion)
    if clause.modifier == "exact" or clause.kind is Kind.URI:
        return SI.c.raw == c.value
    escaped = c.value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if clause.modifier == "contains":
        return SI.c.text.like(f"%{escaped}%", escape="\\")
    return SI.c.text.like(f"{escaped}%", escape="\\")


def _date_sql(c: DateCriterion, low: Any, high: Any) -> ColumnElement[bool]:
    if c.prefix == "eq":
        return and_(low >= c.low, high <= c.high)
    if c.prefix == "ne":
        return ~and_(low >= c.low, high <= c.high)
    compare: ColumnElement[bool]
    if c.prefix == "gt":
        compare = high > c.high
    elif c.prefix == "lt":
        compare = low < c.low
    elif c.prefix == "ge":
        compare = high >= c.low
    else:
        compare = low <= c.high
    return compare
