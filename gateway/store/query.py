"""Search requests, parsed once into a ``SearchQuery`` that every store evaluates the same way.

Parsing is strict: an unknown parameter, modifier or prefix is a 400 that names it (FHIR allows
ignoring them, but a silently ignored filter returns *more* than the client asked for, which is the
wrong way to fail for sensitive data). ``Prefer: handling=lenient`` opts into ignoring.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import BadRequest, Issue, UnknownParameter
from gateway.store.blind import PREFIX_CAP
from gateway.store.searchparams import (
    CONTROL_PARAMS,
    IndexEntry,
    Kind,
    SearchParam,
    lookup,
    normalise,
    parse_date_range,
)
from gateway.vocabulary.codesystems import canonical_system
from gateway.vocabulary.references import ID_PATTERN, TYPE_PATTERN

if TYPE_CHECKING:
    from gateway.store.port import StoreSession

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
    (``searchparams.FACT_PARAM_NAMES``)."""

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


def _reference(value: str) -> ReferenceCriterion:
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2:
        return ReferenceCriterion(parts[-2], parts[-1])
    return ReferenceCriterion(None, parts[0])


def _reference_value(name: str, value: str) -> ReferenceCriterion:
    """A reference value names a record (``[Type/]id``, or a URL ending so): its id must be a
    FHIR id and its type a type name, or it could match nothing the index holds."""
    criterion = _reference(value)
    if not ID_PATTERN.fullmatch(criterion.ref_id) or (
        criterion.ref_type is not None and not TYPE_PATTERN.fullmatch(criterion.ref_type)
    ):
        raise _refused(f"{name} must be a reference [Type/]id with a FHIR id", name)
    return criterion


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
