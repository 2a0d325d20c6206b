"""The compiled form of a mapping spec, and ``Mapping.apply(record, context) -> Mapped``.

``gateway.mapping.compiler`` turns a spec into a tree of nodes once, at load; ``apply`` walks that
tree for each record. Nothing here parses YAML, reads a file or builds an expression: a node is a
small object with a ``build(run, data, prefix)`` method that returns a JSON value, ``ABSENT``, or
(only where the parent is an array) a ``Spliced`` list of items.

The rules every node keeps:

- **Empty is absent.** ``""``, whitespace, ``None``, a missing key, an empty object or array
  produce no element (FHIR forbids empty values); an object whose ``$needs`` are missing is
  dropped whole.
- **Problems name, never quote.** A problem's place is the file and row of the record and the
  column or field path (``Services[1].TypeProvided``); its reason names the column, the code
  table or the element. No source value, and no text of a foreign exception (the JSONata
  library's messages quote the values they failed on), ever reaches a problem.
- **Required means all or nothing.** A problem in a ``$required`` value is ``blocking``: the
  record yields no resources at all, only its problems.
- **Never-mapped fields are never seen.** The spec's ``never_map`` paths are refused at load in
  every field path and expression, and removed from the record before any node runs, so not even
  an expression that serialises its whole input can reach them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

import orjson

from gateway.mapping.codes import CodeEntry, CodeTable
from gateway.mapping.expressions import Expression, ExpressionFailed
from gateway.mapping.model import (
    Mapped,
    MappedResource,
    MappingContext,
    MappingProblem,
    MappingVersion,
)
from gateway.mapping.placeholders import SourceKey, source_reference
from gateway.vocabulary.references import ID_PATTERN
from gateway.vocabulary.source import Place, SourceRecord


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()


class Spliced(list[Any]):
    """Items a node gives to the array around it (``$each``, ``$split``, a list from an
    expression), spliced in rather than nested."""


SECURITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LABEL_DISPLAY = {
    "ETH": "substance abuse information sensitivity",
    "PSY": "psychiatry disorder information sensitivity",
    "SDV": "sexual assault, abuse, or domestic violence information sensitivity",
    "HIV": "HIV/AIDS information sensitivity",
    "STD": "sexually transmitted disease information sensitivity",
    "SEX": "sexuality and reproductive health information sensitivity",
    "LOCIS": "location information sensitivity",
}

# As gateway.write.validate: C0 (but tab, LF, CR), DEL, C1 and lone surrogates.
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_CODE = re.compile(r"[^\s]+( [^\s]+)*")
_DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[ T][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)?"
)
_ROW = re.compile(r"row ([0-9]{1,12})")


# --------------------------------------------------------------------------------------------
# One record's run


class _Run:
    """The state of one ``apply``: the problems so far, the labels of the resource being built."""

    __slots__ = (
        "aliases",
        "context",
        "file",
        "jsonata_context",
        "labels",
        "memo",
        "problems",
        "row",
        "version",
    )

    def __init__(self, record: SourceRecord, context: MappingContext) -> None:
        self.version = record.version
        self.context = context
        self.file = record.origin.source if isinstance(record.origin.source, str) else ""
        match = (
            _ROW.fullmatch(record.origin.locator)
            if isinstance(record.origin.locator, str)
            else None
        )
        self.row = int(match.group(1)) if match else None
        self.problems: list[MappingProblem] = []
        self.labels: set[str] = set()
        # Scalar results of expressions, by (expression text, input identity), for this record
        # only: a spec that computes one key in three places evaluates it once. The input is
        # kept with its result, so that its id cannot be reused by another object meanwhile.
        self.memo: dict[tuple[str, int], tuple[Any, Any]] = {}
        # A row bound under a name (``each: {as: referral}``, ``$each_as``): the name -> the
        # row's place (``outgoing_referrals[1]``), so problems name the row, not the alias.
        self.aliases: dict[str, str] = {}
        self.jsonata_context = {
            "partner_id": context.partner_id,
            "partner_kind": context.partner_kind,
            "record_type": record.record_type,
            "source_id": record.source_id,
            "version": record.version,
        }

    def _unalias(self, field: str, column: str) -> tuple[str, str]:
        """A path through a bound row (``referral.status``) as the row's place
        (``outgoing_referrals[1].status``); the row itself names its list as the column."""
        head, dot, rest = field.partition(".")
        place = self.aliases.get(head)
        if place is None:
            return field, column
        if not dot:
            return place, place.rpartition("[")[0].rpartition(".")[2]
        return f"{place}.{rest}", column

    def problem(self, where: Where, prefix: str, reason: str, *, blocking: bool) -> None:
        if where.path:
            field = f"{prefix}.{where.path}" if prefix else where.path
            column = where.column
            if self.aliases:
                field, column = self._unalias(field, column)
            if field == column:
                field = ""
        else:
            field, column = prefix, ""
        name = where.name
        if self.aliases and name:
            head, dot, rest = name.partition(".")
            place = self.aliases.get(head)
            if place is not None:  # the list's name, not the spec's alias for its row
                name = place.rpartition("[")[0] + dot + rest
        self.problems.append(
            MappingProblem(
                place=Place(file=self.file, row=self.row, column=column, field=field),
                reason=f"{name}: {reason}" if name else reason,
                element=where.element,
                blocking=blocking,
            )
        )


@dataclass(frozen=True, slots=True)
class Where:
    """What a node's problems name: the source path (relative to its scope), the column (last
    step of the path), the name used in reasons, and the FHIR element."""

    path: str
    column: str
    name: str
    element: str


# --------------------------------------------------------------------------------------------
# Reading values


def _is_map(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)


def get_path(data: Any, steps: tuple[str, ...]) -> Any:
    """The value at a dotted path of dicts, or ABSENT."""
    current = data
    for step in steps:
        if type(current) is not dict and not isinstance(current, Mapping):
            return ABSENT
        current = current.get(step)
        if current is None:
            return ABSENT
    return current


Getter = Callable[[Any], Any]


def make_getter(steps: tuple[str, ...]) -> Getter:
    """A function giving the mapped cell at a path (trimmed, empty is ABSENT), or ABSENT."""
    if len(steps) == 1:
        name = steps[0]

        def one(data: Any) -> Any:
            if type(data) is not dict and not isinstance(data, Mapping):
                return ABSENT
            value = data.get(name)
            if type(value) is str:
                value = value.strip()
                return value if value else ABSENT
            return ABSENT if value is None else leaf(value)

        return one

    def nested(data: Any) -> Any:
        value = get_path(data, steps)
        return ABSENT if value is ABSENT else leaf(value)

    return nested


Gatherer = Callable[[Any], list[Any]]


def make_gatherer(steps: tuple[tuple[str, bool], ...]) -> Gatherer:
    """A function giving every mapped cell at a condition path (``name[]``: each row)."""
    if not any(each for _name, each in steps):
        getter = make_getter(tuple(name for name, _each in steps))

        def single(data: Any) -> list[Any]:
            value = getter(data)
            return [] if value is ABSENT else [value]

        return single
    return lambda data: gather(data, steps)


def leaf(value: Any) -> Any:
    """A source cell as mapped: strings trimmed, empty ones absent, integers as their digits."""
    if isinstance(value, str):
        value = value.strip()
        return value if value else ABSENT
    if value is None:
        return ABSENT
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def gather(data: Any, steps: tuple[tuple[str, bool], ...]) -> list[Any]:
    """Every leaf at a condition path, where ``name[]`` steps into each row of a list."""
    current = [data]
    for name, each in steps:
        following: list[Any] = []
        for item in current:
            if _is_map(item):
                value = item.get(name)
                if value is None:
                    continue
                if each:
                    if isinstance(value, list):
                        following.extend(value)
                else:
                    following.append(value)
        current = following
    return [v for v in (leaf(x) for x in current) if v is not ABSENT]


def prune(value: Any) -> Any:
    """A JSON value with empty strings, objects and arrays (and nulls) removed, recursively."""
    if isinstance(value, str):
        return value if value.strip() else ABSENT
    if value is None:
        return ABSENT
    if isinstance(value, dict):
        out = {k: v for k, raw in value.items() if (v := prune(raw)) is not ABSENT}
        return out if out else ABSENT
    if isinstance(value, list):
        items = [v for raw in value if (v := prune(raw)) is not ABSENT]
        return items if items else ABSENT
    return value


def has_bad_chars(value: Any) -> bool:
    if isinstance(value, str):
        return _BAD_CHARS.search(value) is not None
    if isinstance(value, dict):
        return any(has_bad_chars(k) or has_bad_chars(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_bad_chars(v) for v in value)
    return False


# Conversions: (run, value, where, prefix, blocking) -> value | ABSENT
Conversion = Callable[[_Run, Any, Where, str, bool], Any]


def as_string(run: _Run, value: Any, where: Where, prefix: str, blocking: bool) -> Any:
    if not isinstance(value, str):
        run.problem(where, prefix, "is not text", blocking=blocking)
        return ABSENT
    if _BAD_CHARS.search(value):
        run.problem(where, prefix, "contains control characters", blocking=blocking)
        return ABSENT
    return value


def as_code(run: _Run, value: Any, where: Where, prefix: str, blocking: bool) -> Any:
    text = as_string(run, value, where, prefix, blocking)
    if text is ABSENT:
        return ABSENT
    if not _CODE.fullmatch(text):
        run.problem(where, prefix, "is not a code (no inner runs of spaces)", blocking=blocking)
        return ABSENT
    return text


def as_date(run: _Run, value: Any, where: Where, prefix: str, blocking: bool) -> Any:
    match = _DATE.fullmatch(value) if isinstance(value, str) else None
    if match:
        try:
            return date(int(match[1]), int(match[2]), int(match[3])).isoformat()
        except ValueError:
            pass
    run.problem(where, prefix, "is not a date (yyyy-mm-dd)", blocking=blocking)
    return ABSENT


_V2_DTM = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})"
    r"(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(\.[0-9]{1,4})?)?)?)?)?)?"
    r"([+-][0-9]{4})?"
)


def _v2_parts(value: Any) -> re.Match[str] | None:
    """An HL7 v2 DT/DTM (``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]``) checked to be a real date
    and time, or None."""
    match = _V2_DTM.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second, _fraction, zone = match.groups()
    try:
        date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    if (hour and int(hour) > 23) or (minute and int(minute) > 59) or (second and int(second) > 59):
        return None
    if zone and (int(zone[1:3]) > 14 or int(zone[3:]) > 59):
        return None
    return match


def as_v2date(run: _Run, value: Any, where: Where, prefix: str, blocking: bool) -> Any:
    """An HL7 v2 DT/DTM as a FHIR ``date``: its date part, at the precision sent."""
    match = _v2_parts(value)
    if match is None:
        run.problem(where, prefix, "is not an HL7 date (YYYY[MM[DD]])", blocking=blocking)
        return ABSENT
    year, month, day = match.group(1, 2, 3)
    return "-".join(p for p in (year, month, day) if p)


def as_v2datetime(run: _Run, value: Any, where: Where, prefix: str, blocking: bool) -> Any:
    """An HL7 v2 DTM as a FHIR ``dateTime``. FHIR needs a zone with a time: a time sent without
    its offset (or without seconds' minutes) keeps only the date part."""
    match = _v2_parts(value)
    if match is None:
        run.problem(where, prefix, "is not an HL7 date and time", blocking=blocking)
        return ABSENT
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    day_part = "-".join(p for p in (year, month, day) if p)
    if not (day and hour and minute and zone):
        return day_part
    clock = f"{hour}:{minute}:{second or '00'}{fraction or ''}"
    return f"{day_part}T{clock}{zone[:3]}:{zone[3:]}"


def as_id(run: _Run, value: Any, where: Where, prefix: str, blocking: bool) -> Any:
    if isinstance(value, str) and ID_PATTERN.fullmatch(value):
        return value
    run.problem(where, prefix, "is not a FHIR id", blocking=blocking)
    return ABSENT


def as_uri(run: _Run, value: Any, where: Where, prefix: str, blocking: bool) -> Any:
    text = as_string(run, value, where, prefix, blocking)
    if text is ABSENT:
        return ABSENT
    if any(c.isspace() for c in text):
        run.problem(where, prefix, "is not a URI (contains spaces)", blocking=blocking)
        return ABSENT
    return text


def as_raw(run: _Run, value: Any, where: Where, prefix: str, blocking: bool) -> Any:
    value = prune(value)
    if value is not ABSENT and has_bad_chars(value):
        run.problem(where, prefix, "contains control characters", blocking=blocking)
        return ABSENT
    return value


CONVERSIONS: Mapping[str, Conversion] = {
    "string": as_string,
    "code": as_code,
    "date": as_date,
    "id": as_id,
    "uri": as_uri,
    "raw": as_raw,
    "v2date": as_v2date,
    "v2datetime": as_v2datetime,
}


# --------------------------------------------------------------------------------------------
# Conditions: (run, data, prefix) -> bool

Condition = Callable[[_Run, Any, str], bool]


def condition_equals(steps: tuple[tuple[str, bool], ...], wanted: frozenset[str]) -> Condition:
    if not any(each for _name, each in steps):
        getter = make_getter(tuple(name for name, _each in steps))

        def check_one(run: _Run, data: Any, prefix: str) -> bool:
            return getter(data) in wanted

        return check_one
    gatherer = make_gatherer(steps)

    def check(run: _Run, data: Any, prefix: str) -> bool:
        return any(v in wanted for v in gatherer(data) if type(v) is str)

    return check


def condition_is(steps: tuple[tuple[str, bool], ...], wanted: bool) -> Condition:
    """The field is exactly the JSON boolean ``wanted`` (not ``"true"``, not 1)."""
    getter = make_getter(tuple(name for name, _each in steps))

    def check(run: _Run, data: Any, prefix: str) -> bool:
        value = getter(data)
        return type(value) is bool and value is wanted

    return check


def condition_present(steps: tuple[tuple[str, bool], ...], present: bool) -> Condition:
    gatherer = make_gatherer(steps)

    def check(run: _Run, data: Any, prefix: str) -> bool:
        return bool(gatherer(data)) is present

    return check


def condition_version(versions: frozenset[str]) -> Condition:
    def check(run: _Run, data: Any, prefix: str) -> bool:
        return run.version in versions

    return check


def condition_all(parts: Sequence[Condition]) -> Condition:
    def check(run: _Run, data: Any, prefix: str) -> bool:
        return all(p(run, data, prefix) for p in parts)

    return check


def condition_any(parts: Sequence[Condition]) -> Condition:
    def check(run: _Run, data: Any, prefix: str) -> bool:
        return any(p(run, data, prefix) for p in parts)

    return check


def condition_not(part: Condition) -> Condition:
    def check(run: _Run, data: Any, prefix: str) -> bool:
        return not part(run, data, prefix)

    return check


def condition_expr(expression: Expression, where: Where) -> Condition:
    def check(run: _Run, data: Any, prefix: str) -> bool:
        try:
            return expression.evaluate(data, run.jsonata_context) is True
        except ExpressionFailed as failed:
            run.problem(where, prefix, f"condition failed ({failed.code})", blocking=False)
            return False

    return check


# --------------------------------------------------------------------------------------------
# Nodes


class Node:
    __slots__ = ()

    def build(self, run: _Run, data: Any, prefix: str) -> Any:  # pragma: no cover (abstract)
        raise NotImplementedError


Source = Callable[[_Run, Any, str], Any]  # (run, data, prefix) -> raw value | ABSENT


class Lookup:
    """A code table lookup; ``output`` is ``code``, ``coding`` or ``codeable``."""

    __slots__ = ("output", "table", "unknown")

    def __init__(self, table: CodeTable, output: str, unknown: str) -> None:
        self.table = table
        self.output = output
        self.unknown = unknown

    def __call__(self, run: _Run, value: Any, where: Where, prefix: str, blocking: bool) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        entry = self.table.entries.get(value) if isinstance(value, str) else None
        if entry is None:
            if self.unknown == "problem":
                run.problem(
                    where,
                    prefix,
                    f"value is not in code table {self.table.name}",
                    blocking=blocking,
                )
            return ABSENT
        if entry.versions is not None and run.version not in entry.versions:
            run.problem(
                where,
                prefix,
                f"value of code table {self.table.name} is not defined in this source version",
                blocking=blocking,
            )
            return ABSENT
        if entry.code is None:  # an ``omit`` entry: a known value that maps to nothing
            return ABSENT
        if entry.labels:
            run.labels.update(entry.labels)
        if self.output == "code":
            return entry.code
        if self.output == "display":
            return entry.display if entry.display else ABSENT
        if self.output == "coding":
            return entry.coding()
        return {"coding": [entry.coding()]}


Wrap = Callable[[_Run, Any, Where, str, bool], Any]


def wrap_source_ref(resource_type: str, record_type: str) -> Wrap:
    def wrap(run: _Run, value: Any, where: Where, prefix: str, blocking: bool) -> Any:
        try:
            return {"reference": source_reference(resource_type, record_type, value)}
        except (ValueError, TypeError):
            run.problem(where, prefix, "cannot be used as a source id", blocking=blocking)
            return ABSENT

    return wrap


def wrap_local_ref(resource_type: str) -> Wrap:
    def wrap(run: _Run, value: Any, where: Where, prefix: str, blocking: bool) -> Any:
        if isinstance(value, str) and ID_PATTERN.fullmatch(value):
            return {"reference": f"{resource_type}/{value}"}
        run.problem(where, prefix, "is not a FHIR id", blocking=blocking)
        return ABSENT

    return wrap


class Value(Node):
    """A value spec: a source, then split, conversion, code table and reference wrapping."""

    __slots__ = (
        "convert",
        "expected",
        "invalid_blocks",
        "lookup",
        "many",
        "required",
        "source",
        "split",
        "when",
        "where",
        "wrap",
    )

    def __init__(
        self,
        *,
        source: Source,
        where: Where,
        convert: Conversion,
        lookup: Lookup | None = None,
        wrap: Wrap | None = None,
        split: str | None = None,
        when: Condition | None = None,
        required: bool = False,
        expected: bool = False,
        many: bool = False,
        invalid_blocks: bool = False,
    ) -> None:
        # ``$invalid: blocking``: a value that is there but cannot be mapped blocks the record;
        # a missing one does not (unless required).
        self.invalid_blocks = invalid_blocks
        self.many = many  # an expression in an array: a list result is items of that array
        self.source = source
        self.where = where
        self.convert = convert
        self.lookup = lookup
        self.wrap = wrap
        self.split = split
        self.when = when
        self.required = required
        self.expected = expected

    def _one(self, run: _Run, value: Any, where: Where, prefix: str) -> Any:
        blocking = self.required or self.invalid_blocks
        if self.convert is as_string and type(value) is str and not _BAD_CHARS.search(value):
            pass  # the common case, without a call
        else:
            value = self.convert(run, value, where, prefix, blocking)
            if value is ABSENT:
                return ABSENT
        if self.lookup is not None:
            value = self.lookup(run, value, where, prefix, blocking)
            if value is ABSENT:
                return ABSENT
        if self.wrap is not None:
            value = self.wrap(run, value, where, prefix, blocking)
        return value

    def build(self, run: _Run, data: Any, prefix: str) -> Any:
        before = len(run.problems)
        if self.when is not None and not self.when(run, data, prefix):
            if self.required:  # required is required, whatever the condition
                run.problem(self.where, prefix, "is missing", blocking=True)
            return ABSENT
        raw = self.source(run, data, prefix)
        if raw is ABSENT:
            result: Any = ABSENT
        elif self.split is not None:
            result = self._split(run, raw, prefix)
        elif self.many and isinstance(raw, list):
            result = self._items(run, raw, prefix)
        else:
            result = self._one(run, raw, self.where, prefix)
        if result is ABSENT and (self.required or self.expected) and len(run.problems) == before:
            if raw is ABSENT:
                run.problem(self.where, prefix, "is missing", blocking=self.required)
            elif self.required:  # a value the table maps to nothing (``Data not collected``)
                run.problem(self.where, prefix, "maps to no value", blocking=True)
        return result

    def _split(self, run: _Run, raw: Any, prefix: str) -> Any:
        if not isinstance(raw, str):
            run.problem(self.where, prefix, "is not text", blocking=self.required)
            return ABSENT
        assert self.split is not None
        parts = [p.strip() for p in raw.split(self.split)]
        out = Spliced()
        for position, part in enumerate(parts):
            if not part:
                continue
            where = self._item_where(position)
            value = self._one(run, part, where, prefix)
            if value is not ABSENT:
                out.append(value)
        return out if out else ABSENT

    def _items(self, run: _Run, raw: list[Any], prefix: str) -> Any:
        # An expression (or a constant) that gives a list of values for an array element.
        out = Spliced()
        for position, item in enumerate(raw):
            value = leaf(item)
            if value is ABSENT:
                continue
            value = self._one(run, value, self._item_where(position), prefix)
            if value is not ABSENT:
                out.append(value)
        return out if out else ABSENT

    def _item_where(self, position: int) -> Where:
        where = self.where
        path = f"{where.path}[{position}]" if where.path else ""
        return Where(path=path, column=where.column, name=where.name, element=where.element)


class Const(Node):
    """A constant known at load (a ``$const``, or a ``$const`` looked up in a code table): its
    value is checked once, and each record gets a copy; its labels still label the resource."""

    __slots__ = ("encoded", "labels", "value", "when")

    def __init__(self, value: Any, *, labels: frozenset[str], when: Condition | None) -> None:
        self.value = value
        # Objects and arrays are rebuilt from their JSON for each record (faster than a copy).
        self.encoded = orjson.dumps(value) if isinstance(value, dict | list) else None
        self.labels = labels
        self.when = when

    def build(self, run: _Run, data: Any, prefix: str) -> Any:
        if self.when is not None and not self.when(run, data, prefix):
            return ABSENT
        if self.labels:
            run.labels.update(self.labels)
        return self.value if self.encoded is None else orjson.loads(self.encoded)


class First(Node):
    """``$first``: the first of its alternatives that gives a value."""

    __slots__ = ("alternatives", "expected", "required", "when", "where")

    def __init__(
        self,
        alternatives: Sequence[Node],
        *,
        where: Where,
        when: Condition | None,
        required: bool,
        expected: bool,
    ) -> None:
        self.alternatives = tuple(alternatives)
        self.where = where
        self.when = when
        self.required = required
        self.expected = expected

    def build(self, run: _Run, data: Any, prefix: str) -> Any:
        before = len(run.problems)
        if self.when is not None and not self.when(run, data, prefix):
            if self.required:
                run.problem(self.where, prefix, "is missing", blocking=True)
            return ABSENT
        for alternative in self.alternatives:
            value = alternative.build(run, data, prefix)
            if value is not ABSENT:
                return value
        if len(run.problems) == before and (self.required or self.expected):
            run.problem(self.where, prefix, "is missing", blocking=self.required)
        elif self.required:
            # An alternative's problem made the required element absent: the record blocks.
            for position in range(before, len(run.problems)):
                problem = run.problems[position]
                if not problem.blocking:
                    run.problems[position] = MappingProblem(
                        problem.place, problem.reason, problem.element, True
                    )
        return ABSENT


class Struct(Node):
    """A FHIR object: its elements in spec order; ``$needs``/``$needs_any`` drop it whole."""

    __slots__ = ("elements", "needs", "needs_any", "when")

    def __init__(
        self,
        elements: Sequence[tuple[str, Node]],
        *,
        when: Condition | None = None,
        needs: Sequence[str] = (),
        needs_any: Sequence[str] = (),
    ) -> None:
        self.elements = tuple(elements)
        self.when = when
        self.needs = tuple(needs)
        self.needs_any = tuple(needs_any)

    def build(self, run: _Run, data: Any, prefix: str) -> Any:
        if self.when is not None and not self.when(run, data, prefix):
            return ABSENT
        out: dict[str, Any] = {}
        for key, node in self.elements:
            value = node.build(run, data, prefix)
            if value is not ABSENT:
                out[key] = value
        if not out:
            return ABSENT
        if self.needs and not all(k in out for k in self.needs):
            return ABSENT
        if self.needs_any and not any(k in out for k in self.needs_any):
            return ABSENT
        return out


class Each(Node):
    """``$each``: the object built once per row of a list (its scope is the row). With
    ``alias`` (``$each_as``), the scope stays the enclosing one and the row is bound under that
    name, so the object can read both, and a row may be a plain value (a list of names)."""

    __slots__ = ("alias", "body", "name", "steps", "where")

    def __init__(
        self, steps: tuple[str, ...], body: Struct, where: Where, alias: str | None = None
    ) -> None:
        self.steps = steps
        self.name = ".".join(steps)
        self.body = body
        self.where = where
        self.alias = alias

    def build(self, run: _Run, data: Any, prefix: str) -> Any:
        rows = get_path(data, self.steps)
        if rows is ABSENT:
            return ABSENT
        if not isinstance(rows, list):
            run.problem(self.where, prefix, "is not a list of rows", blocking=False)
            return ABSENT
        out = Spliced()
        base = f"{prefix}.{self.name}" if prefix else self.name
        for position, row in enumerate(rows):
            here = f"{base}[{position}]"
            if self.alias is not None:
                value = _build_aliased(self.body, run, data, prefix, self.alias, row, here)
                if value is not ABSENT:
                    out.append(value)
                continue
            if not _is_map(row):
                run.problems.append(
                    MappingProblem(
                        place=Place(file=run.file, row=run.row, field=here),
                        reason=f"{self.name}: row is not a record",
                        element=self.where.element,
                    )
                )
                continue
            value = self.body.build(run, row, here)
            if value is not ABSENT:
                out.append(value)
        return out if out else ABSENT


def _bind(data: Any, alias: str, row: Any) -> dict[str, Any]:
    scope = dict(data) if _is_map(data) else {}
    scope[alias] = row
    return scope


def _build_aliased(
    body: Node, run: _Run, data: Any, prefix: str, alias: str, row: Any, here: str
) -> Any:
    before = run.aliases.get(alias)
    run.aliases[alias] = here
    try:
        return body.build(run, _bind(data, alias, row), prefix)
    finally:
        if before is None:
            del run.aliases[alias]
        else:
            run.aliases[alias] = before


class Array(Node):
    __slots__ = ("items",)

    def __init__(self, items: Sequence[Node]) -> None:
        self.items = tuple(items)

    def build(self, run: _Run, data: Any, prefix: str) -> Any:
        out: list[Any] = []
        for node in self.items:
            value = node.build(run, data, prefix)
            if value is ABSENT:
                continue
            if isinstance(value, Spliced):
                out.extend(value)
            else:
                out.append(value)
        return out if out else ABSENT


# Sources


def source_field(steps: tuple[str, ...]) -> Source:
    getter = make_getter(steps)

    def field(run: _Run, data: Any, prefix: str) -> Any:
        return getter(data)

    return field


def source_fields(paths: Sequence[tuple[str, ...]], joiner: str) -> Source:
    """Several fields joined into one lookup key (``RecordType:TypeProvided``); absent when any
    part is."""
    getters = [make_getter(steps) for steps in paths]

    def joined(run: _Run, data: Any, prefix: str) -> Any:
        parts: list[str] = []
        for getter in getters:
            value = getter(data)
            if type(value) is not str:
                return ABSENT
            parts.append(value)
        return joiner.join(parts)

    return joined


def source_const(value: Any) -> Source:
    def const(run: _Run, data: Any, prefix: str) -> Any:
        return value

    return const


def source_context(name: str) -> Source:
    def context(run: _Run, data: Any, prefix: str) -> Any:
        return leaf(run.jsonata_context.get(name))

    return context


def source_template(template: str) -> Source:
    def formatted(run: _Run, data: Any, prefix: str) -> Any:
        return template.format_map(run.jsonata_context)

    return formatted


def source_partner_ref() -> Source:
    def partner(run: _Run, data: Any, prefix: str) -> Any:
        return {"reference": f"Organization/{run.context.partner_id}"}

    return partner


NOT_A_PARTNER = "recipient not a partner of the network"


def organization_lookup_key(prefix: str, value: str) -> str:
    """The ``MappingContext.organizations`` key for a value: ``facility:<value>`` and
    ``id:<value>`` as given; ``name:<value>`` case-folded, its runs of spaces made one."""
    if prefix == "name":
        value = " ".join(value.split()).casefold()
    return f"{prefix}:{value}"


def source_organization(key: Node, prefix: str, where: Where) -> Source:
    """``$organization``: the partner Organization a key (an HL7 facility, a partner name)
    names, ``{"reference": "Organization/<id>"}``; absent, with a non-blocking problem naming
    the field (never the value), when the network has no such partner."""

    def organization(run: _Run, data: Any, scope: str) -> Any:
        named = where
        if isinstance(key, First) and key.when is None:
            # The alternative that gave the key is the field a problem names.
            value: Any = ABSENT
            for alternative in key.alternatives:
                value = alternative.build(run, data, scope)
                if value is not ABSENT:
                    if isinstance(alternative, Value) and alternative.where.path:
                        named = alternative.where
                    break
        else:
            value = key.build(run, data, scope)
        if value is ABSENT:
            return ABSENT
        if not isinstance(value, str):
            run.problem(named, scope, "is not text", blocking=False)
            return ABSENT
        reference = run.context.organizations.get(organization_lookup_key(prefix, value))
        if reference is None:
            run.problem(named, scope, NOT_A_PARTNER, blocking=False)
            return ABSENT
        return {"reference": reference}

    return organization


def source_transformed(
    source: Source, expression: Expression, where: Where, *, required: bool
) -> Source:
    """A field's value (trimmed) passed through an expression, as ``$``."""

    def transformed(run: _Run, data: Any, prefix: str) -> Any:
        value = source(run, data, prefix)
        if value is ABSENT:
            return ABSENT
        try:
            result = expression.evaluate(value, run.jsonata_context)
        except ExpressionFailed as failed:
            run.problem(where, prefix, f"expression failed ({failed.code})", blocking=required)
            return ABSENT
        if isinstance(result, str):
            return leaf(result)
        return ABSENT if result is None else result

    return transformed


def source_expr(expression: Expression, where: Where, *, required: bool) -> Source:
    def evaluated(run: _Run, data: Any, prefix: str) -> Any:
        memo_key = (expression.text, id(data))
        cached = run.memo.get(memo_key)
        if cached is not None and cached[0] is data:
            return cached[1]
        try:
            result = expression.evaluate(data, run.jsonata_context)
        except ExpressionFailed as failed:
            run.problem(where, prefix, f"expression failed ({failed.code})", blocking=required)
            return ABSENT
        if isinstance(result, str):
            value = leaf(result)
            run.memo[memo_key] = (data, value)
            return value
        if result is None:
            run.memo[memo_key] = (data, ABSENT)
            return ABSENT
        return result

    return evaluated


# --------------------------------------------------------------------------------------------
# A whole spec


@dataclass(frozen=True, slots=True)
class ResourceKey:
    """A resource's own key (``key:``): ``SourceKey(type, record_type, <source_id node>)``."""

    record_type: str
    source_id: Node
    where: Where


@dataclass(frozen=True, slots=True)
class ResourceEach:
    """``each: {field, as}``: one resource per row of a list, the row bound under ``alias``."""

    steps: tuple[str, ...]
    alias: str
    where: Where


def label_key(value: str) -> str:
    """A value as a label lookup compares it: compatibility-normalised (a full-width Z is Z),
    invisible format characters dropped, runs of white space made one, case-folded. A source
    that spells a violence code ``z91.42`` or a problem ``human trafficking`` is labelled as if
    it had written ``Z91.42`` or ``Human Trafficking``: a label missed is a disclosure."""
    text = unicodedata.normalize("NFKC", value)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return " ".join(text.split()).casefold()


@dataclass(frozen=True, slots=True)
class LabelRule:
    """``labels:``: every cell at a path looked up in a code table (exactly, or by the longest
    entry that is a prefix of it), both compared by ``label_key``; a found entry's labels label
    the resource. A value not in the table labels nothing and is no problem."""

    steps: tuple[tuple[str, bool], ...]
    table: CodeTable
    prefix: bool
    keyed: Mapping[str, CodeEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.keyed:
            keyed = {label_key(value): entry for value, entry in self.table.entries.items()}
            object.__setattr__(self, "keyed", keyed)

    def apply(self, run: _Run, data: Any) -> None:
        entries = self.keyed
        for value in gather(data, self.steps):
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                continue
            value = label_key(value)
            if not self.prefix:
                entry = entries.get(value)
                if entry is not None and _entry_applies(run, entry.versions):
                    run.labels.update(entry.labels)
                continue
            for length in range(len(value), 0, -1):
                entry = entries.get(value[:length])
                if entry is not None and _entry_applies(run, entry.versions):
                    run.labels.update(entry.labels)
                    break


def _entry_applies(run: _Run, versions: frozenset[str] | None) -> bool:
    return versions is None or run.version in versions


@dataclass(frozen=True, slots=True)
class ResourceRule:
    resource_type: str
    when: Condition | None
    body: Struct
    key: ResourceKey | None = None
    each: ResourceEach | None = None
    labels: tuple[LabelRule, ...] = ()


@dataclass(frozen=True, slots=True)
class Check:
    """A field validated against a code table on every record (a problem when its value is not
    in it), whether or not a resource uses it."""

    steps: tuple[tuple[str, bool], ...]
    lookup: Lookup
    where: Where

    def run(self, run: _Run, data: Any) -> None:
        for path, value in _cells(data, self.steps):
            where = Where(path, self.where.column, self.where.name, self.where.element)
            self.lookup(run, value, where, "", False)


def _cells(data: Any, steps: tuple[tuple[str, bool], ...]) -> list[tuple[str, Any]]:
    """(``HealthAndDV[1].CurrentlyFleeing``, value) for every cell at a condition path."""
    current: list[tuple[str, Any]] = [("", data)]
    for name, each in steps:
        following: list[tuple[str, Any]] = []
        for path, item in current:
            if not _is_map(item):
                continue
            value = item.get(name)
            if value is None:
                continue
            here = f"{path}.{name}" if path else name
            if each:
                if isinstance(value, list):
                    following.extend((f"{here}[{i}]", v) for i, v in enumerate(value))
            else:
                following.append((here, value))
        current = following
    return [(path, v) for path, raw in current if (v := leaf(raw)) is not ABSENT]


class RecordMapping:
    """A compiled spec. ``apply`` never raises on a record: anything unexpected becomes a
    blocking problem naming the exception's type only."""

    def __init__(
        self,
        *,
        version: MappingVersion,
        source_versions: frozenset[str],
        resources: Sequence[ResourceRule],
        checks: Sequence[Check],
        strip: Callable[[Mapping[str, Any]], Mapping[str, Any]],
        uses_expressions: bool,
    ) -> None:
        self.version = version
        self.system = version.system
        self.record_type = version.record_type
        self.source_versions = source_versions
        self.resources = tuple(resources)
        self.checks = tuple(checks)
        self._strip = strip
        self.uses_expressions = uses_expressions

    def apply(self, record: SourceRecord, context: MappingContext) -> Mapped:
        try:
            return self._apply(record, context)
        except Exception as exc:  # the last line of defence: never a crash, never a value
            origin = getattr(record, "origin", None)
            return Mapped(
                problems=[
                    MappingProblem(
                        place=Place(file=getattr(origin, "source", "") or ""),
                        reason=f"mapping failed (internal error {type(exc).__name__})",
                        blocking=True,
                    )
                ],
                mapping=self.version,
            )

    def _apply(self, record: SourceRecord, context: MappingContext) -> Mapped:
        run = _Run(record, context)
        mapped = Mapped(mapping=self.version)
        if record.system != self.system or record.record_type != self.record_type:
            mapped.problems.append(
                MappingProblem(
                    place=Place(file=run.file, row=run.row),
                    reason=f"record is not a {self.system} {self.record_type}",
                    blocking=True,
                )
            )
            return mapped
        if record.version not in self.source_versions:
            mapped.problems.append(
                MappingProblem(
                    place=Place(file=run.file, row=run.row),
                    reason="source version is not one this mapping supports",
                    blocking=True,
                )
            )
            return mapped
        if not _is_map(record.fields):
            mapped.problems.append(
                MappingProblem(
                    place=Place(file=run.file, row=run.row),
                    reason="record fields are not a mapping",
                    blocking=True,
                )
            )
            return mapped
        if not isinstance(record.source_id, str) or not record.source_id.strip():
            mapped.problems.append(
                MappingProblem(
                    place=Place(file=run.file, row=run.row),
                    reason="record has no source id",
                    blocking=True,
                )
            )
            return mapped
        data = self._strip(record.fields)
        for check in self.checks:
            check.run(run, data)
        for rule in self.resources:
            if rule.when is not None and not rule.when(run, data, ""):
                continue
            for scope, place in _scopes(rule, run, data):
                if place is not None and rule.each is not None:
                    run.aliases[rule.each.alias] = place
                try:
                    item = self._resource(rule, run, scope, record)
                finally:
                    run.aliases.clear()
                if item is not None:
                    mapped.resources.append(item)
        mapped.problems = run.problems
        if mapped.blocked:
            mapped.resources = []
        return mapped

    def _resource(
        self, rule: ResourceRule, run: _Run, data: Any, record: SourceRecord
    ) -> MappedResource | None:
        run.labels = set()
        body = rule.body.build(run, data, "")
        if body is ABSENT:
            return None
        key = SourceKey(rule.resource_type, record.record_type, record.source_id)
        if rule.key is not None:
            before = len(run.problems)
            value = rule.key.source_id.build(run, data, "")
            if not isinstance(value, str) or not value:
                if len(run.problems) == before:
                    run.problem(rule.key.where, "", "resource key is missing", blocking=True)
                else:  # the key node's own problem blocks: a resource without its key is none
                    for position in range(before, len(run.problems)):
                        problem = run.problems[position]
                        run.problems[position] = MappingProblem(
                            problem.place, problem.reason, problem.element, True
                        )
                return None
            key = SourceKey(rule.resource_type, rule.key.record_type, value)
        for label_rule in rule.labels:
            label_rule.apply(run, data)
        resource: dict[str, Any] = {"resourceType": rule.resource_type, **body}
        if run.labels:
            meta = dict(resource.get("meta") or {})
            own = list(meta.get("security") or [])
            have = {c.get("code") for c in own if isinstance(c, dict)}
            own.extend(
                {"system": SECURITY_SYSTEM, "code": label, "display": LABEL_DISPLAY[label]}
                for label in sorted(run.labels - have)
            )
            meta["security"] = own
            resource = {"resourceType": rule.resource_type, "meta": meta, **body}
        return MappedResource(key=key, resource=resource)


def _scopes(rule: ResourceRule, run: _Run, data: Any) -> list[tuple[Any, str | None]]:
    """The data each resource of a rule is built from: the record, or (``each``) the record
    with one row bound under the alias, per row."""
    each = rule.each
    if each is None:
        return [(data, None)]
    rows = get_path(data, each.steps)
    if rows is ABSENT:
        return []
    name = ".".join(each.steps)
    if not isinstance(rows, list):
        run.problem(each.where, "", "is not a list of rows", blocking=False)
        return []
    return [(_bind(data, each.alias, row), f"{name}[{i}]") for i, row in enumerate(rows)]
