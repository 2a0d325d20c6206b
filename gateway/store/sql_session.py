"""One transaction of the SQL store: reads (by id, version, history) and writes (create,
update, delete, the batch path, reindex and re-encryption); search comes from ``SearchSql``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    String,
    delete,
    false,
    func,
    insert,
    literal,
    select,
    update,
)

from gateway.clock import Clock
from gateway.errors import (
    Conflict,
    Gone,
    PreconditionFailed,
    not_found,
)
from gateway.keys import KeyRing
from gateway.store.blind import Blinder
from gateway.store.driver_sql import DriverSql
from gateway.store.facts import seal_facts
from gateway.store.port import HistoryPage, Located, StoredResource
from gateway.store.records import PreparedVersion, aad, new_id, prepare
from gateway.store.schema import resource_versions as V
from gateway.store.schema import resources as R
from gateway.store.schema import search_index as SI
from gateway.store.sql_rows import (
    CURRENT_VERSION,
    located_row,
    open_version,
    parse_stamp,
    stored_version,
)
from gateway.store.sql_search import (
    SearchSql,
)
from gateway.vocabulary.dates import stamp
from gateway.vocabulary.index import extract
from gateway.write.admit import ValidResource, require_valid


class SqlSession(SearchSql):
    def __init__(
        self, conn: Connection, ring: KeyRing, blinder: Blinder, clock: Clock, sql: DriverSql
    ) -> None:
        self.conn = conn
        self._sql = sql
        self._ring = ring
        self._blinder = blinder
        self._clock = clock
        self._postgres = conn.dialect.name == "postgresql"

    # -- reading -----------------------------------------------------------------------------

    def _decrypt(self, row: Any) -> StoredResource:
        if row.deleted:
            return StoredResource(
                row.resource_type,
                row.id,
                row.version_id,
                parse_stamp(row.last_updated),
                True,
                b"",
                row.contributor,
            )
        return open_version(
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
            CURRENT_VERSION.where(R.c.resource_type == resource_type, R.c.id == resource_id)
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
        rows = self._blinder.rows(rid, version.resource_type, version.index)
        if rows:
            self.conn.exec_driver_sql(self._sql.insert_index, rows)

    def _seal_facts(self, version: PreparedVersion) -> tuple[str, bytes]:
        return seal_facts(
            self._ring, version.resource_type, version.id, version.version_id, version.index
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
                **dict(zip(("facts_key", "facts"), self._seal_facts(version), strict=True)),
            )
            .returning(R.c.rid)
        ).scalar_one()
        self._store_version(rid, version, replace_index=False)
        return rid

    def create(self, resource: ValidResource, *, resource_id: str | None = None) -> StoredResource:
        require_valid(resource)
        version = prepare(resource.doc, resource_id or new_id(), 1, self._clock.now())
        if resource_id is not None and self._rid(version.resource_type, resource_id) is not None:
            raise Conflict("the resource id is already taken")
        self._insert_head(version, resource.contributor)
        return stored_version(version, resource.contributor)

    def locate(self, resource_type: str, resource_id: str) -> Located | None:
        row = self.conn.exec_driver_sql(self._sql.locate, (resource_type, resource_id)).first()
        return located_row(self._ring, resource_type, resource_id, row)

    def contributors(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        return {key: head.contributor for key, head in self._heads(keys).items()}

    def _heads(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        by_type: dict[str, list[str]] = {}
        for resource_type, resource_id in dict.fromkeys(keys):
            by_type.setdefault(resource_type, []).append(resource_id)
        heads: dict[tuple[str, str], Any] = {}
        for resource_type, ids in by_type.items():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                statement = self._sql.heads(len(chunk))
                for row in self.conn.exec_driver_sql(statement, (resource_type, *chunk)):
                    heads[(resource_type, row.id)] = row
        return heads

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
        resource: ValidResource,
        *,
        if_match: int | None,
    ) -> tuple[StoredResource, bool]:
        require_valid(resource)
        head = self._lock_head(resource_type, resource_id)
        now = self._clock.now()
        if head is None:
            if if_match is not None:
                raise PreconditionFailed(
                    f"If-Match given but {resource_type}/{resource_id} does not exist"
                )
            version = prepare(resource.doc, resource_id, 1, now)
            self._insert_head(version, resource.contributor)
            return stored_version(version, resource.contributor), True
        if if_match is not None and if_match != head.version_id:
            raise PreconditionFailed(
                f"version conflict: {resource_type}/{resource_id} is at version {head.version_id}"
            )
        version = prepare(resource.doc, resource_id, head.version_id + 1, now)
        self._advance_head(
            head, version.version_id, version.last_updated, facts=self._seal_facts(version)
        )
        self._store_version(head.rid, version, replace_index=True)
        return stored_version(version, head.contributor), bool(head.deleted)

    def _advance_head(
        self, head: Any, version_id: int, moment: datetime, *, facts: tuple[str, bytes] | None
    ) -> None:
        """Move the head to a new version: live with its sealed facts, or deleted (``None``)."""
        # The version guard turns a lost race on SQLite-less-locking paths into a clean conflict.
        result = self.conn.execute(
            update(R)
            .where(R.c.rid == head.rid, R.c.version_id == head.version_id)
            .values(
                version_id=version_id,
                last_updated=stamp(moment),
                deleted=facts is None,
                facts_key=facts[0] if facts else None,
                facts=facts[1] if facts else None,
            )
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
        self._advance_head(head, version_id, now, facts=None)
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

    def write_many(self, resources: Sequence[ValidResource]) -> list[StoredResource]:
        for each in resources:
            require_valid(each)
        """The batch path: a handful of statements for the whole batch, whatever its size."""
        now = self._clock.now()
        heads = self._heads([(r.doc["resourceType"], r.doc["id"]) for r in resources if r.id])
        fresh: list[tuple[PreparedVersion, str | None]] = []
        existing: list[tuple[Any, PreparedVersion]] = []
        in_order: list[tuple[PreparedVersion, str | None]] = []
        seen: set[tuple[str, str]] = set()
        for valid in resources:
            resource, contributor = valid.doc, valid.contributor
            rid_key = (resource["resourceType"], resource.get("id") or "")
            if rid_key in seen:
                raise Conflict("a batch names the same resource twice")
            head = heads.get(rid_key)
            if head is None:
                version = prepare(resource, resource.get("id") or new_id(), 1, now)
                fresh.append((version, contributor))
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
                    **dict(zip(("facts_key", "facts"), self._seal_facts(v), strict=True)),
                }
                for v, contributor in fresh
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
                for rid, (head_row, (v, _)) in enumerate(
                    zip(heads_rows, fresh, strict=True), last + 1
                ):
                    head_row["rid"] = rid
                    rids[(v.resource_type, v.id)] = rid
                self.conn.execute(insert(R), heads_rows)
        for head, version in existing:
            self._advance_head(
                head, version.version_id, version.last_updated, facts=self._seal_facts(version)
            )
            rids[(version.resource_type, version.id)] = head.rid
        if existing:
            self.conn.execute(delete(SI).where(SI.c.rid.in_([h.rid for h, _ in existing])))
        versions = [*(v for v, _ in fresh), *(v for _, v in existing)]
        version_rows: list[tuple[Any, ...]] = []
        index_rows: list[tuple[Any, ...]] = []
        for v in versions:
            rid = rids[(v.resource_type, v.id)]
            key_id, blob = self._ring.encrypt(v.body, aad(v.resource_type, v.id, v.version_id))
            version_rows.append((rid, v.version_id, stamp(v.last_updated), False, key_id, blob))
            index_rows.extend(self._blinder.rows(rid, v.resource_type, v.index))
        # Straight to the driver's executemany: per-row parameter building in SQLAlchemy cost
        # more than the database's own work for a batch (measured).
        self.conn.exec_driver_sql(self._sql.insert_versions, version_rows)
        if index_rows:
            self.conn.exec_driver_sql(self._sql.insert_index, index_rows)
        return [stored_version(v, who) for v, who in in_order]

    def reindex_batch(self, after_rid: int, batch_size: int) -> tuple[int, int]:
        """Re-extract the index of the live resources after ``after_rid``; returns the last
        rid done and how many were done."""
        batch = (
            CURRENT_VERSION.where(R.c.rid > after_rid, R.c.deleted == false())
            .order_by(R.c.rid)
            .limit(batch_size)
        )
        if self._postgres:
            # The heads are locked as a write locks them (first, then the index): a write
            # racing the reindex waits for it, and can neither deadlock with it nor have its
            # new index and facts overwritten by the old version's. (SQLite: BEGIN IMMEDIATE.)
            batch = batch.with_for_update(of=R)
        rows = self.conn.execute(batch).all()
        if not rows:
            return after_rid, 0
        rids = [row.rid for row in rows]
        self.conn.execute(delete(SI).where(SI.c.rid.in_(rids)))
        index_rows: list[tuple[Any, ...]] = []
        for row in rows:
            entries = extract(orjson.loads(self._decrypt(row).body))
            index_rows.extend(self._blinder.rows(row.rid, row.resource_type, entries))
            key_id, sealed = seal_facts(
                self._ring, row.resource_type, row.id, row.version_id, entries
            )
            self.conn.execute(
                update(R)
                .where(R.c.rid == row.rid, R.c.version_id == row.version_id)
                .values(facts_key=key_id, facts=sealed)
            )
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
