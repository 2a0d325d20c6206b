"""The SQL store (SQLAlchemy 2 Core) for SQLite and PostgreSQL.

Every version is encrypted before it reaches the database; search runs on ``search_index`` and
decrypts only the rows of the page it returns.

``SqlStore`` (here) owns the engine, the keys and the sessions; a session's reads and writes are
``sql_session``, its search ``sql_search``, rows and statements ``sql_rows`` and ``driver_sql``,
clauses ``criteria_sql`` over the blind index (``blind``), consent facts ``facts``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Engine,
    false,
    func,
    literal,
    select,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from gateway.clock import Clock
from gateway.errors import (
    Conflict,
    Gone,
    ServiceUnavailable,
    not_found,
)
from gateway.keys import FileKeyRing, KeyRing
from gateway.store.blind import Blinder
from gateway.store.driver_sql import DriverSql
from gateway.store.port import HistoryPage, Located, SearchPage, SearchQuery, StoredResource
from gateway.store.schema import resource_versions as V
from gateway.store.schema import resources as R
from gateway.store.sql_rows import (
    count_unindexed,
    located_row,
    open_version,
)
from gateway.store.sql_session import SqlSession
from gateway.write.admit import ValidResource, require_valid

Timing = Callable[[str, float], None]


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
        self._sql = DriverSql.for_dialect(engine.dialect.paramstyle)
        self._blinders: tuple[KeyRing, Blinder] | None = None

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def waits_on_network(self) -> bool:
        return self._engine.dialect.name != "sqlite"

    def _ring(self) -> KeyRing:
        return self._keys.current() if isinstance(self._keys, FileKeyRing) else self._keys

    def _blinder(self, ring: KeyRing) -> Blinder:
        """The blind-index keys of ``ring``, derived once per ring (a rotation makes a new one)."""
        cached = self._blinders
        if cached is None or cached[0] is not ring:
            cached = self._blinders = (ring, Blinder.from_ring(ring))
        return cached[1]

    def key_ring(self) -> KeyRing:
        """The key ring as it is now (the app derives its paging-token key from it)."""
        return self._ring()

    @contextmanager
    def _session(self, *, write: bool, op: str) -> Iterator[SqlSession]:
        started = time.perf_counter()
        try:
            with self._engine.connect() as conn:
                if write:
                    conn = conn.execution_options(gateway_write=True)
                with conn.begin():
                    ring = self._ring()
                    yield SqlSession(conn, ring, self._blinder(ring), self._clock, self._sql)
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
    def transaction(self) -> Iterator[SqlSession]:
        with self._session(write=True, op="transaction") as session:
            yield session

    def create(self, resource: ValidResource, *, resource_id: str | None = None) -> StoredResource:
        require_valid(resource)
        with self._session(write=True, op="create") as s:
            return s.create(resource, resource_id=resource_id)

    def locate(self, resource_type: str, resource_id: str) -> Located | None:
        """The head and newest live version: one prepared statement on a reader connection,
        like ``read`` (every door that addresses a record by id starts here)."""
        row = self._driver_fetch("locate", self._sql.locate, (resource_type, resource_id))
        return located_row(self._ring(), resource_type, resource_id, row)

    def contributors(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        with self._session(write=False, op="contributors") as s:
            return s.contributors(keys)

    def consent_probe(self, patient_id: str, *, recorder: str, actor: tuple[str, str]) -> bool:
        row = self._driver_fetch(
            "consent_probe", self._sql.consent_probe, (patient_id, recorder, actor[0], actor[1])
        )
        return row is not None

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: ValidResource,
        *,
        if_match: int | None,
    ) -> tuple[StoredResource, bool]:
        require_valid(resource)
        with self._session(write=True, op="update") as s:
            return s.update(resource_type, resource_id, resource, if_match=if_match)

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
        return open_version(
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

    def write_many(self, resources: Sequence[ValidResource]) -> list[StoredResource]:
        with self._session(write=True, op="write_many") as s:
            return s.write_many(resources)

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

    def count_unindexed(self) -> int:
        """Live resources without sealed facts: written before the blind index (migration
        0005) and not reindexed since. Search under consent releases none of them."""
        with self._session(write=False, op="count") as s:
            return count_unindexed(s.conn)

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
