"""Search requests, parsed once into a ``SearchQuery`` that every store evaluates the same way.

Parsing is strict: an unknown parameter, modifier or prefix is a 400 that names it (FHIR allows
ignoring them, but a silently ignored filter returns *more* than the client asked for, which is the
wrong way to fail for sensitive data). ``Prefer: handling=lenient`` opts into ignoring.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from gateway.errors import BadRequest, Issue, UnknownParameter
from gateway.store.blind import PREFIX_CAP
from gateway.store.port import (
    Clause,
    Criterion,
    DateCriterion,
    Include,
    ReferenceCriterion,
    SearchQuery,
    StringCriterion,
    TokenCriterion,
)
from gateway.vocabulary.codesystems import canonical_system
from gateway.vocabulary.dates import parse_date_range
from gateway.vocabulary.index import IndexEntry, normalise
from gateway.vocabulary.references import ID_PATTERN, reference_value
from gateway.vocabulary.registry import CONTROL_PARAMS, Kind, SearchParam, lookup

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
SUPPORTED_DATE_PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le"})
MODIFIERS: dict[Kind, frozenset[str]] = {
    # No :contains: the index is blind (keyed prefixes), and every substring of every name as a
    # keyed value would multiply the index and what a dump reveals (docs/encryption.md).
    Kind.STRING: frozenset({"exact", "missing"}),
    Kind.URI: frozenset({"missing"}),
    Kind.TOKEN: frozenset({"missing"}),
    Kind.REFERENCE: frozenset({"missing"}),
    Kind.DATE: frozenset({"missing"}),
}


SORTABLE = frozenset({"_lastUpdated", "_id"})

# Caps on the work one search may ask for, whatever door it came in by (a GET query string, a
# POST _search form, a Bundle entry URL, If-None-Exist). Real FHIR clients (SMART apps, US Core
# and IPS queries, our partners' adapters) send 1-5 parameters with a handful of values each;
# the caps leave several times that headroom and refuse the rest with a 400 that names the
# parameter, before any SQL is built. Every clause is a subquery and every OR-ed value one to
# three bound parameters, so 20 clauses x 100 values in all stays far below SQLite's bound
# parameter limit and keeps a PostgreSQL plan small (150 clauses took 14 s before the cap).
MAX_SEARCH_ITEMS = 100  # name=value pairs of any kind (as parse_query_string's MAX_QUERY_FIELDS)
MAX_SEARCH_CLAUSES = 20  # criteria parameters (AND-ed): each one is a subquery
MAX_OR_VALUES = 100  # OR-ed values across the whole query (100 UUIDs in an _id list fit)
MAX_VALUE_CHARS = 512  # one value: ids are 64, a system|code or a canonical URL a few hundred
MAX_PARAM_CHARS = 8192  # one raw parameter value before splitting (bounds the split itself; a
# sealed _cursor is about 250 characters, and paging.CursorSeal refuses tokens over ~5,500)
MAX_INCLUDES = 10  # _include and _revinclude together: each is one more query
# A parameter name as FHIR spells one: name[:modifier], chains with "." (refused later, naming
# it). Anything else is refused without being repeated back.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.:]{0,99}")
# C0 controls and DEL (PostgreSQL text cannot hold NUL; none belongs in a search value), and
# unpaired surrogates (not encodable as UTF-8: the driver would fail on them).
FORBIDDEN_CHARS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
# The FHIR search forms of a date, dateTime or instant (after the prefix), and no others:
# Python's ISO parsers accept more (basic format, week dates, a space for "T", other digits).
DATE_VALUE = re.compile(
    r"[0-9]{4}(-[0-9]{2}(-[0-9]{2}"
    r"(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)


def parse_search(
    resource_type: str,
    items: Iterable[tuple[str, str]],
    *,
    default_count: int = 50,
    max_count: int = 500,
    lenient: bool = False,
) -> SearchQuery:
    clauses: list[Clause] = []
    sort: tuple[tuple[str, bool], ...] = ()
    count = default_count
    cursor_token: str | None = None
    includes: list[Include] = []
    revincludes: list[Include] = []
    summary_count = False
    with_total = True
    echo: list[tuple[str, str]] = []
    problems: list[Issue] = []

    criteria_params = or_values = 0
    for position, (raw_name, value) in enumerate(items):
        if position == MAX_SEARCH_ITEMS:
            raise _refused(
                f"a search takes at most {MAX_SEARCH_ITEMS} parameters", None, "too-costly"
            )
        _check_item(raw_name, value)
        name, _, modifier = raw_name.partition(":")
        if raw_name != "_cursor":
            echo.append((raw_name, value))
        if name in CONTROL_PARAMS:
            if name == "_count":
                count = _parse_count(value, max_count)
                summary_count = summary_count or count == 0
            elif name == "_sort":
                sort = _parse_sort(value)
            elif name == "_summary":
                if value == "count":
                    summary_count = True
                elif value != "false":
                    problems.append(_unsupported("_summary must be count or false", "_summary"))
            elif name == "_include":
                includes.append(_parse_include(resource_type, value, modifier, reverse=False))
            elif name == "_revinclude":
                revincludes.append(_parse_include(resource_type, value, modifier, reverse=True))
            elif name == "_cursor":
                # Opaque to the client: the consent layer opens it (bound to the requester and
                # this query) and hands the store the position (``Cursor``).
                cursor_token = value
            elif name == "_total":
                if value not in ("none", "estimate", "accurate"):
                    raise _refused("_total must be none, estimate or accurate", "_total")
                with_total = value != "none"
            if len(includes) + len(revincludes) > MAX_INCLUDES:
                raise _refused(
                    f"a search takes at most {MAX_INCLUDES} _include and _revinclude in all",
                    name,
                    "too-costly",
                )
            continue
        criteria_params += 1
        if criteria_params > MAX_SEARCH_CLAUSES:
            raise _refused(
                f"a search takes at most {MAX_SEARCH_CLAUSES} search criteria", name, "too-costly"
            )
        try:
            clause = _parse_clause(resource_type, name, modifier or None, value)
        except UnknownParameter as exc:
            if not lenient:
                problems.extend(exc.issues)
            continue
        clauses.append(clause)
        or_values += max(1, len(clause.criteria) + len(clause.ids))
        if or_values > MAX_OR_VALUES:
            raise _refused(
                f"a search takes at most {MAX_OR_VALUES} values in all", name, "too-costly"
            )
    if problems:
        raise UnknownParameter(problems[0].diagnostics, issues=problems)
    return SearchQuery(
        resource_type=resource_type,
        clauses=tuple(clauses),
        sort=sort,
        count=count,
        cursor_token=cursor_token,
        includes=tuple(includes),
        revincludes=tuple(revincludes),
        summary_count=summary_count,
        with_total=with_total or summary_count,
        echo=tuple(echo),
    )


def _unsupported(message: str, name: str) -> Issue:
    return Issue(code="not-supported", diagnostics=message, expression=(name,))


def _refused(message: str, name: str | None, code: str = "invalid") -> BadRequest:
    """A 400 naming the parameter (``name``; None when the name itself is unfit to repeat),
    never its value."""
    return BadRequest(message, issues=[Issue(code, message, expression=(name,) if name else ())])


def _check_item(raw_name: str, value: str) -> None:
    if not NAME_PATTERN.fullmatch(raw_name):
        raise _refused("a search parameter name is malformed", None)
    if FORBIDDEN_CHARS.search(value):
        raise _refused(f"search parameter {raw_name} contains a control character", raw_name)
    name = raw_name.partition(":")[0]
    # Criteria are split on commas and each value is held to MAX_VALUE_CHARS (_or_values);
    # a result parameter is one value, except _cursor (a sealed token, opened elsewhere).
    single = name in CONTROL_PARAMS and name != "_cursor"
    limit = MAX_VALUE_CHARS if single else MAX_PARAM_CHARS
    if len(value) > limit:
        raise _refused(
            f"search parameter {raw_name} is longer than {limit} characters", raw_name, "too-long"
        )


def _parse_count(value: str, max_count: int) -> int:
    if not (value.isascii() and value.isdigit()):
        raise _refused("_count must be a non-negative integer", "_count")
    digits = value.lstrip("0")
    return max_count if len(digits) > 9 else min(int(digits or "0"), max_count)


def _parse_sort(value: str) -> tuple[tuple[str, bool], ...]:
    out: list[tuple[str, bool]] = []
    for part in value.split(","):
        desc = part.startswith("-")
        field_name = part[1:] if desc else part
        if field_name not in SORTABLE:
            raise UnknownParameter(
                "_sort by that field is not supported (use _lastUpdated or _id)",
                issues=[_unsupported("_sort parameter not supported", "_sort")],
            )
        if any(f == field_name for f, _ in out):
            raise _refused("_sort names a field twice", "_sort")
        out.append((field_name, desc))
    return tuple(out)


def _parse_include(resource_type: str, value: str, modifier: str, *, reverse: bool) -> Include:
    label = "_revinclude" if reverse else "_include"
    if modifier:
        raise UnknownParameter(f"{label}:{modifier} is not supported")
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise BadRequest(f"{label} must be SourceType:parameter[:TargetType]")
    source, param_name = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if not reverse and source != resource_type:
        raise BadRequest(f"{label} source type must be {resource_type}")
    param = lookup(source, param_name)
    if param is None or param.kind is not Kind.REFERENCE:
        raise UnknownParameter(
            f"{label} names no reference parameter of this server",
            issues=[_unsupported(f"{label} names no reference parameter", label)],
        )
    if reverse and target is not None and target != resource_type:
        raise BadRequest(f"{label} target type must be {resource_type}")
    return Include(source, param_name, target)


def _parse_clause(resource_type: str, name: str, modifier: str | None, value: str) -> Clause:
    if name == "_id":
        if modifier:
            message = f"modifier :{modifier} is not supported on _id"
            raise UnknownParameter(message, issues=[_unsupported(message, f"_id:{modifier}")])
        ids = _or_values("_id", value)
        if not all(ID_PATTERN.fullmatch(i) for i in ids):
            raise _refused("_id values must be FHIR ids", "_id")
        return Clause("_id", Kind.TOKEN, None, ids=tuple(ids))
    param: SearchParam | None
    if name == "_lastUpdated":
        kind = Kind.DATE
    else:
        param = lookup(resource_type, name)
        if param is None:
            if "." in name:
                message = f"chained parameter {name!r} is not supported"
                raise UnknownParameter(message, issues=[_unsupported(message, name)])
            raise UnknownParameter(
                f"unknown search parameter {name!r} for {resource_type}",
                issues=[_unsupported(f"unknown search parameter {name!r}", name)],
            )
        kind = param.kind
    if modifier is not None and modifier not in MODIFIERS[kind]:
        raise UnknownParameter(
            f"modifier :{modifier} is not supported on {name}",
            issues=[_unsupported(f"modifier :{modifier} is not supported", f"{name}:{modifier}")],
        )
    if modifier == "missing":
        if value not in ("true", "false"):
            raise BadRequest(f"{name}:missing must be true or false")
        return Clause(name, kind, modifier, missing=value == "true")
    values = _or_values(name, value)
    if not values:
        raise BadRequest(f"search parameter {name} has no value")
    criteria: tuple[Criterion, ...]
    if kind is Kind.TOKEN:
        criteria = tuple(_token(v) for v in values)
    elif kind is Kind.REFERENCE:
        criteria = tuple(_reference_value(name, v) for v in values)
    elif kind is Kind.DATE:
        criteria = tuple(_date(name, v) for v in values)
    elif modifier == "exact" or kind is Kind.URI:
        criteria = tuple(StringCriterion(v) for v in values)
    else:
        # Compared on the first PREFIX_CAP characters, as the blind index keeps them.
        folded = [normalise(v)[:PREFIX_CAP] for v in values]
        if not all(folded):
            raise _refused(f"search parameter {name} has no value", name)
        criteria = tuple(StringCriterion(v) for v in folded)
    return Clause(name, kind, modifier, criteria=criteria)


def _split_or(value: str) -> list[str]:
    """Comma means OR; ``\\,`` is a literal comma (FHIR escaping)."""
    out, current, escaped = [], [], False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    out.append("".join(current))
    return [v for v in out if v != ""]


def _or_values(name: str, value: str) -> list[str]:
    values = _split_or(value)
    if len(values) > MAX_OR_VALUES:
        raise _refused(
            f"search parameter {name} takes at most {MAX_OR_VALUES} values", name, "too-costly"
        )
    if any(len(v) > MAX_VALUE_CHARS for v in values):
        raise _refused(
            f"a value of search parameter {name} is longer than {MAX_VALUE_CHARS} characters",
            name,
            "too-long",
        )
    return values


def _token(value: str) -> TokenCriterion:
    if "|" not in value:
        return TokenCriterion(None, value)
    system, _, code = value.partition("|")
    # Compared with the index's canonical systems: an alias (OID, https, ...) finds the same.
    return TokenCriterion(canonical_system(system), code or None)


def _reference_value(name: str, value: str) -> ReferenceCriterion:
    """A reference value names a record (``[Type/]id``, or a URL ending so): its id must be a
    FHIR id and its type a type name, or it could match nothing the index holds. A version
    (``/_history/n``) is refused: the index holds the current version's references."""
    ref = reference_value(value)
    if ref is None or ref.version is not None:
        raise _refused(f"{name} must be a reference [Type/]id with a FHIR id", name)
    return ReferenceCriterion(ref.resource_type or None, ref.id)


def _date(name: str, value: str) -> DateCriterion:
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    body = value[2:] if value[:2] in DATE_PREFIXES else value
    if prefix not in SUPPORTED_DATE_PREFIXES:
        message = f"date prefix {prefix!r} is not supported on {name}"
        raise UnknownParameter(message, issues=[_unsupported(message, name)])
    try:
        if not DATE_VALUE.fullmatch(body):
            raise ValueError
        low, high = parse_date_range(body)
    except (BadRequest, ValueError, OverflowError) as exc:  # overflow: 9999-12-31, year 1-14h
        raise BadRequest(
            f"{name} is not a valid FHIR date",
            issues=[Issue("invalid", f"{name} is not a valid FHIR date", expression=(name,))],
        ) from exc
    # Widened to whole seconds: the blind index compares dates to the second (``criteria_sql``),
    # and so the in-memory store answers the same.
    return DateCriterion(prefix, low[:19] + ".000000", high[:19] + ".999999")


# ---------------------------------------------------------------------------------------------
# Semantics, for stores that evaluate in Python (the in-memory twin). The SQL store compiles the
# same rules to SQL; the contract tests hold the two to the same answers.


def date_matches(c: DateCriterion, low: str, high: str) -> bool:
    if c.prefix == "eq":
        return low >= c.low and high <= c.high
    if c.prefix == "ne":
        return not (low >= c.low and high <= c.high)
    if c.prefix == "gt":
        return high > c.high
    if c.prefix == "lt":
        return low < c.low
    if c.prefix == "ge":
        return high >= c.low
    return low <= c.high  # le


def entry_matches(clause: Clause, entry: IndexEntry) -> bool:
    for c in clause.criteria:
        if isinstance(c, TokenCriterion):
            if c.code is not None and entry.code != c.code:
                continue
            if c.system is None or (c.system == "" and entry.system is None):
                return True
            if entry.system == c.system:
                return True
        elif isinstance(c, ReferenceCriterion):
            if entry.ref_id == c.ref_id and (c.ref_type is None or entry.ref_type == c.ref_type):
                return True
        elif isinstance(c, DateCriterion):
            if (
                entry.low is not None
                and entry.high is not None
                and date_matches(c, entry.low, entry.high)
            ):
                return True
        elif clause.modifier == "exact" or clause.kind is Kind.URI:
            if entry.raw == c.value:
                return True
        elif entry.text is not None and entry.text.startswith(c.value):
            return True
    return False


def clause_matches(clause: Clause, entries: Sequence[IndexEntry]) -> bool:
    mine = [e for e in entries if e.param == clause.name]
    if clause.missing is not None:
        return (not mine) == clause.missing
    return any(entry_matches(clause, e) for e in mine)
