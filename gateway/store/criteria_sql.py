"""Search clauses compiled to SQL over the blind index (``blind.py``).

A clause's values are blinded the way the rows were (under every key of the ring, so that rows
not yet reindexed after a rotation still match) and compared by equality; a date compares its
year in clear and its finer parts as sets of blind values. The in-memory store evaluates the
same clauses in Python (``query.entry_matches``); the contract tests hold the two together.
"""

from __future__ import annotations

from calendar import monthrange
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, not_, or_, select, true

from gateway.store.blind import CODE, DATE, EXACT, PREFIX, SYSTEM, Blinder, scope_of
from gateway.store.port import (
    Clause,
    DateCriterion,
    ReferenceCriterion,
    StringCriterion,
    TokenCriterion,
)
from gateway.store.schema import resources as R
from gateway.store.schema import search_index as SI
from gateway.vocabulary.registry import Kind

_PARTS = ("month", "day", "hour", "minute", "second")
LOW = (SI.c.low_year, *(SI.c[f"low_{p}"] for p in _PARTS))
HIGH = (SI.c.high_year, *(SI.c[f"high_{p}"] for p in _PARTS))
_SECOND = timedelta(seconds=1)


def clause_sql(blinder: Blinder, resource_type: str, clause: Clause) -> ColumnElement[bool]:
    if clause.name == "_id":
        return R.c.id.in_(clause.ids)
    if clause.name == "_lastUpdated":  # a server timestamp on the head row, not a search value
        return or_(
            *(
                clear_date_sql(c, R.c.last_updated, R.c.last_updated)
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
    scope = scope_of(resource_type, clause.name)
    alternatives = [_criterion_sql(blinder, scope, clause, c) for c in clause.criteria]
    return R.c.rid.in_(rows_of_param.where(or_(*alternatives)))


def _criterion_sql(blinder: Blinder, scope: bytes, clause: Clause, c: Any) -> ColumnElement[bool]:
    if isinstance(c, TokenCriterion):
        parts = []
        if c.code is not None:
            parts.append(SI.c.code.in_(blinder.every(CODE, scope, c.code)))
        if c.system == "":
            parts.append(SI.c.system.is_(None))
        elif c.system is not None:
            parts.append(SI.c.system.in_(blinder.every(SYSTEM, scope, c.system)))
        return and_(true(), *parts)
    if isinstance(c, ReferenceCriterion):
        if c.ref_type is None:
            return SI.c.ref_id == c.ref_id
        return and_(SI.c.ref_id == c.ref_id, SI.c.ref_type == c.ref_type)
    if isinstance(c, DateCriterion):
        return blind_date_sql(blinder, scope, c)
    assert isinstance(c, StringCriterion)
    if clause.modifier == "exact" or clause.kind is Kind.URI:
        return SI.c.raw.in_(blinder.every(EXACT, scope, c.value))
    return SI.c.text.in_(blinder.every(PREFIX, scope, c.value))


def clear_date_sql(c: DateCriterion, low: Any, high: Any) -> ColumnElement[bool]:
    """A date criterion on clear stamp columns (``resources.last_updated``)."""
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


def blind_date_sql(blinder: Blinder, scope: bytes, c: DateCriterion) -> ColumnElement[bool]:
    """A date criterion on the blind columns, compared to the second (the parser has widened
    the criterion to whole seconds, so the in-memory store answers the same)."""
    builder = _DateSql(blinder, scope)
    if c.prefix in ("eq", "ne"):
        within = and_(builder.at_least(LOW, c.low), builder.at_most(HIGH, c.high))
        return within if c.prefix == "eq" else not_(within)
    if c.prefix == "gt":
        later = _shift(c.high, _SECOND)
        return builder.at_least(HIGH, later) if later else false()
    if c.prefix == "lt":
        earlier = _shift(c.low, -_SECOND)
        return builder.at_most(LOW, earlier) if earlier else false()
    if c.prefix == "ge":
        return builder.at_least(HIGH, c.low)
    return builder.at_most(LOW, c.high)


def _shift(stamp: str, delta: timedelta) -> str | None:
    try:
        return (datetime.fromisoformat(stamp[:19]) + delta).isoformat(timespec="seconds")
    except OverflowError:
        return None


def _parts(stamp: str) -> list[int]:
    return [
        int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10]),
        int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19]),
    ]  # fmt: skip


def _prefix(parts: list[int], level: int) -> str:
    """The stamp prefix down to ``level`` (1 month … 5 second), as ``blind.DATE_LEVELS`` cut it."""
    y, mo, d, h, mi, s = parts
    text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"
    return text[: (7, 10, 13, 16, 19)[level - 1]]


def _lowest(parts: list[int], level: int) -> int:
    return 1 if level in (1, 2) else 0


def _highest(parts: list[int], level: int) -> int:
    if level == 1:
        return 12
    if level == 2:
        return monthrange(parts[0], parts[1])[1]
    return 23 if level == 3 else 59


class _DateSql:
    """``bound >= stamp`` and ``bound <= stamp`` (to the second) over one end's columns: the
    year in clear, each finer part a set of blind values within the parent prefix."""

    def __init__(self, blinder: Blinder, scope: bytes) -> None:
        self._blinder = blinder
        self._scope = scope

    def _part_in(
        self, column: Any, parts: list[int], level: int, values: range
    ) -> ColumnElement[bool]:
        if not values:
            return false()
        clears = [_prefix([*parts[:level], v, *parts[level + 1 :]], level) for v in values]
        matched: ColumnElement[bool] = column.in_(self._blinder.many(DATE, self._scope, clears))
        return matched

    def at_least(self, columns: tuple[Any, ...], stamp: str) -> ColumnElement[bool]:
        return self._compare(columns, _parts(stamp), later=True)

    def at_most(self, columns: tuple[Any, ...], stamp: str) -> ColumnElement[bool]:
        return self._compare(columns, _parts(stamp), later=False)

    def _compare(
        self, columns: tuple[Any, ...], parts: list[int], *, later: bool
    ) -> ColumnElement[bool]:
        edge = _lowest if later else _highest
        # The last part that is not at its edge decides; below it everything matches.
        last = max((lv for lv in range(1, 6) if parts[lv] != edge(parts, lv)), default=0)

        def span(level: int, *, inclusive: bool) -> range:
            v = parts[level]
            if later:
                return range(v if inclusive else v + 1, _highest(parts, level) + 1)
            return range(_lowest(parts, level), (v + 1) if inclusive else v)

        def at(level: int) -> ColumnElement[bool]:
            if level == 0:
                year = f"{parts[0]:04d}"
                if last == 0:
                    whole: ColumnElement[bool] = columns[0] >= year if later else columns[0] <= year
                    return whole
                beyond = columns[0] > year if later else columns[0] < year
                return or_(beyond, and_(columns[0] == year, at(1)))
            if level == last:
                return self._part_in(columns[level], parts, level, span(level, inclusive=True))
            equal = self._part_in(
                columns[level], parts, level, range(parts[level], parts[level] + 1)
            )
            beyond_part = self._part_in(columns[level], parts, level, span(level, inclusive=False))
            return or_(beyond_part, and_(equal, at(level + 1)))

        return at(0)
