"""Search in the SQL store: the page, its count and keyset paging, what a requester may see
(its own rows, the directory, and what consent releases, decided from sealed facts before
the page is read), and the included records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    String,
    and_,
    any_,
    bindparam,
    false,
    func,
    not_,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY

from gateway.keys import KeyRing
from gateway.store.blind import Blinder
from gateway.store.criteria_sql import clause_sql
from gateway.store.facts import open_facts
from gateway.store.port import (
    Candidate,
    ConsentReach,
    Cursor,
    SearchPage,
    SearchQuery,
    StoredResource,
    Visibility,
)
from gateway.store.schema import resources as R
from gateway.store.schema import search_index as SI
from gateway.store.sql_rows import (
    CURRENT_VERSION,
    open_version,
)
from gateway.vocabulary.registry import CONSENT_ACTIVE, CONSENT_ACTOR, CONSENT_PATIENT

if TYPE_CHECKING:
    from gateway.store.port import StoreSession


class SearchSql:
    """The search half of a session (``SqlSession``): needs its connection and keys."""

    conn: Connection
    _ring: KeyRing
    _blinder: Blinder
    _postgres: bool

    def _decrypt(self, row: Any) -> StoredResource:
        raise NotImplementedError

    # -- search ------------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchPage:
        where = [R.c.resource_type == query.resource_type, R.c.deleted == false()]
        where.extend(clause_sql(self._blinder, query.resource_type, c) for c in query.clauses)
        if query.visible_to is not None:
            where.append(self._visible_where(query.visible_to, where, query.resource_type))
        total = (
            self.conn.execute(select(func.count()).select_from(R).where(*where)).scalar_one()
            if query.with_total
            else None
        )
        if query.summary_count or query.count == 0:
            return SearchPage([], total)
        columns = sort_columns(query)
        cursor = query.position()
        after = cursor.after if cursor else True
        page_q = CURRENT_VERSION.where(*where)
        if cursor is not None:
            page_q = page_q.where(keyset(columns, cursor))
        order = [(col.desc() if desc != (not after) else col.asc()) for col, desc in columns]
        rows = list(self.conn.execute(page_q.order_by(*order).limit(query.count + 1)).all())
        more = len(rows) > query.count
        rows = rows[: query.count]
        if not after:
            rows.reverse()
        ring = self._ring
        # Page rows are live (deleted ones are filtered out): unpack and open them directly.
        matches = [
            open_version(ring, rtype, rid_, version, updated, key_id, payload, who)
            for _, rtype, rid_, version, updated, _, key_id, payload, who in rows
        ]
        next_cursor = prev_cursor = None
        if rows:
            if (more and after) or not after:
                next_cursor = Cursor(row_key(rows[-1], query), after=True).encode()
            if cursor is not None and (after or more):
                prev_cursor = Cursor(row_key(rows[0], query), after=False).encode()
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
        own = visible_sql(visibility)
        reach = visibility.reach
        if reach is None:
            return own
        candidates = [*where, not_visible_sql(visibility)]
        if narrow_to is not None:
            candidates.extend(clause_sql(self._blinder, narrow_to, c) for c in reach.clauses)
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
        return list(self.conn.execute(CONSENTING_PATIENTS, bound).scalars())

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
        rows = self.conn.execute(
            select(
                R.c.rid, R.c.resource_type, R.c.id, R.c.version_id, R.c.contributor,
                R.c.facts_key, R.c.facts,
            ).where(*where)
        )  # fmt: skip
        candidates: dict[int, Candidate] = {}
        for rid, rtype, rid_, version, who, facts_key, sealed in rows:
            if sealed is None:
                continue  # not reindexed since the blind index came: never released
            entries = open_facts(self._ring, rtype, rid_, version, facts_key, sealed)
            candidates[rid] = Candidate(rtype, rid_, who, entries)
        if not candidates:
            return []
        # A SearchSql is always a SqlSession: the consent callback may read through it.
        released = reach.release(cast("StoreSession", self), list(candidates.values()))
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
                for row in self.conn.execute(CURRENT_VERSION.where(*where)):
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
            for row in self.conn.execute(CURRENT_VERSION.where(*where).order_by(R.c.rid)):
                out[(row.resource_type, row.id)] = self._decrypt(row)
        page = {(query.resource_type, i) for i in ids}
        return [res for key, res in out.items() if key not in page]


def consenting_patients_sql() -> Select[Any]:
    consent_rows = SI.c.resource_type == "Consent"
    naming = select(SI.c.rid).where(
        consent_rows, SI.c.param == CONSENT_ACTOR, SI.c.ref_type == bindparam("actor_type"),
        SI.c.ref_id == bindparam("actor_id"),
    )  # fmt: skip
    active = select(SI.c.rid).where(consent_rows, SI.c.param == CONSENT_ACTIVE)
    return (
        select(SI.c.ref_id)
        .distinct()
        .where(
            consent_rows, SI.c.param == CONSENT_PATIENT, SI.c.ref_type == "Patient",
            SI.c.rid.in_(naming), SI.c.rid.in_(active),
        )
    )  # fmt: skip


# Built once: it runs on every search under consent.
CONSENTING_PATIENTS = consenting_patients_sql()


def visible_sql(visibility: Visibility) -> ColumnElement[bool]:
    """SQL for ``Visibility.admits``; the two must agree (contract tests)."""
    return or_(
        R.c.contributor == visibility.partner_id,
        and_(
            R.c.contributor.is_(None),
            R.c.resource_type.in_(sorted(visibility.directory_types)),
        ),
    )


def not_visible_sql(visibility: Visibility) -> ColumnElement[bool]:
    """``not Visibility.admits``, written out: negating ``visible_sql`` would be NULL (and so
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


def sort_columns(query: SearchQuery) -> list[tuple[Any, bool]]:
    cols: list[tuple[Any, bool]] = []
    for name, desc in query.sort:
        cols.append((R.c.last_updated if name == "_lastUpdated" else R.c.id, desc))
    cols.append((R.c.rid, False))
    return cols


def row_key(row: Any, query: SearchQuery) -> tuple[Any, ...]:
    key: list[Any] = [row.last_updated if n == "_lastUpdated" else row.id for n, _ in query.sort]
    key.append(row.rid)
    return tuple(key)


def keyset(columns: list[tuple[Any, bool]], cursor: Cursor) -> ColumnElement[bool]:
    """Rows strictly after (or before) the cursor in the sort order, mixed directions allowed."""
    alternatives = []
    for i, (col, desc) in enumerate(columns):
        forward = desc != (not cursor.after)  # True: "comes later" means smaller
        step = col < cursor.key[i] if forward else col > cursor.key[i]
        equal_prefix = [c == cursor.key[j] for j, (c, _) in enumerate(columns[:i])]
        alternatives.append(and_(*equal_prefix, step))
    return or_(*alternatives)
