"""Validation on write: strict JSON parsing with size and depth limits, then a strict walk of the
resource against the FHIR R4 (4.0.1) definitions in ``r4spec.json`` (see ``r4spec_build.py`` for
where they come from).

Invalid means invalid R4, judged as R4's JSON format states it:

- every element is one the definition names (no unknown elements, no ``null`` values except
  in arrays of primitives, no empty objects, arrays or strings); arrays exactly where the element
  repeats; the minimum cardinality of each element; at most one member of a choice element
  (``value[x]``), at least one where the choice is required;
- primitives of the right JSON type, never coerced: boolean is ``true``/``false``, integer,
  unsignedInt and positiveInt are JSON integers in their 32-bit ranges, decimal is a JSON number,
  every other primitive a JSON string matching its R4 regex, with no control character but tab,
  CR and LF; dates are calendar dates; base64Binary decodes;
- every coded element with a required binding holds a code of its value set (the codes are data,
  from the R4 definitions); mimetype bindings (BCP-13) are checked by syntax;
- ``Reference.reference`` is ``Type/id[/_history/vid]``, an absolute ``http(s)`` URL ending so,
  ``urn:uuid:``, ``urn:oid:`` or a ``#fragment`` that names a contained resource (ref-1);
- extensions have a value or nested extensions, not both (ext-1); contained resources contain
  none (dom-2).

The walk is iterative (no recursion, whatever the depth). Issues name the element (a FHIRPath-like
expression such as ``Patient.name[0].given[1]``), never the value that was sent (PHI). The resource
returned, what gets stored, is the very dict that passed: nothing is reshaped or coerced.
"""

from __future__ import annotations

import binascii
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import orjson

from gateway.errors import BadRequest, Issue, Unprocessable

MAX_ISSUES = 20
MAX_STRING = 1024 * 1024  # R4: strings SHALL NOT exceed 1 MB
FREE_TEXT = frozenset({"string", "markdown"})

# Control characters (C0 but tab, LF, CR; DEL; C1) and lone surrogates: PostgreSQL cannot store
# U+0000, and none of them belongs in FHIR text.
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# BCP-13 (RFC 6838) media type, with optional parameters: the syntax of the mimetypes value set.
_RESTRICTED_NAME = r"[A-Za-z0-9!#$&^_.+-]+"
_MIMETYPE = re.compile(
    rf"{_RESTRICTED_NAME}/{_RESTRICTED_NAME}(\s*;\s*{_RESTRICTED_NAME}=(?:{_RESTRICTED_NAME}|\"[^\"]*\"))*"
)
_SAFE_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9]{0,63}")
_FRAGMENT = re.compile(r"#([A-Za-z0-9\-.]{1,64})?")
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# Primitive kinds
BOOLEAN, INTEGER, DECIMAL, STRING, XHTML, BASE64 = range(6)
ARRAY, REQUIRED, NO_EXTENSIONS = 1, 2, 4


@dataclass(frozen=True, slots=True)
class Prop:
    target: str
    primitive: int  # -1 for a complex type or a resource
    array: bool
    pattern: re.Pattern[str] | None = None
    codes: frozenset[str] | None = None
    value_set: str | None = None
    low: int = 0
    high: int = 0
    dates: bool = False
    mimetype: bool = False
    extensible: bool = True  # may have ``_name``: every primitive but ids, Extension.url, div


@dataclass(frozen=True, slots=True)
class Definition:
    props: dict[str, Prop]
    required: tuple[str, ...]
    choices: tuple[tuple[str, bool, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class Spec:
    definitions: dict[str, Definition]
    resources: frozenset[str]
    reference: re.Pattern[str]


@cache
def spec() -> Spec:
    """The R4 definitions, compiled once per process."""
    raw = orjson.loads(resources.files("gateway.write").joinpath("r4spec.json").read_bytes())
    kinds = {"boolean": BOOLEAN, "integer": INTEGER, "number": DECIMAL, "string": STRING}
    primitives: dict[str, dict[str, Any]] = raw["primitives"]
    compiled = {n: re.compile(p["pattern"]) for n, p in primitives.items() if "pattern" in p}
    value_sets = {url: frozenset(codes) for url, codes in raw["valueSets"].items()}

    def prop(target: str, flags: int, binding: str | None) -> Prop:
        p = primitives.get(target)
        if p is None:
            return Prop(target, -1, bool(flags & ARRAY), extensible=False)
        kind = kinds[p["json"]]
        if p.get("xhtml"):
            kind = XHTML
        elif p.get("base64"):
            kind = BASE64
        return Prop(
            target,
            kind,
            bool(flags & ARRAY),
            pattern=compiled.get(target),
            codes=value_sets.get(binding) if binding else None,
            value_set=binding if binding in value_sets else None,
            low=p.get("min", 0),
            high=p.get("max", 0),
            dates=target in ("date", "dateTime", "instant"),
            mimetype=binding == "mimetype",
            extensible=not flags & NO_EXTENSIONS,
        )

    definitions = {}
    for name, d in raw["definitions"].items():
        props = {
            key: prop(entry[0], entry[1], entry[2] if len(entry) > 2 else None)
            for key, entry in d["p"].items()
        }
        required = tuple(key for key, entry in d["p"].items() if entry[1] & REQUIRED)
        choices = tuple(
            (stem, bool(req), tuple(members)) for stem, (req, members) in d.get("c", {}).items()
        )
        definitions[name] = Definition(props, required, choices)
    types = "|".join(sorted(raw["resources"], key=len, reverse=True))
    ident = r"[A-Za-z0-9\-.]{1,64}"
    # R4 references.html: relative or absolute (http/https) literal references.
    reference = re.compile(
        rf"((http|https)://([A-Za-z0-9\-\\.:%$]*/)+)?({types})/{ident}(/_history/{ident})?"
        rf"|{primitives['uuid']['pattern']}|{primitives['oid']['pattern']}"
    )
    return Spec(definitions, frozenset(raw["resources"]), reference)


def parse_json(body: bytes, *, max_depth: int) -> Any:
    """Parse a request body; malformed or over-deep JSON is a 400, never a 500."""
    if not body.strip():
        raise BadRequest("the request body is empty")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("the request body is not valid JSON") from exc
    if _depth_exceeds(value, max_depth):
        raise BadRequest(f"the request body nests deeper than {max_depth} levels")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return False


def validate_resource(
    value: Any, *, allowed_types: frozenset[str] | tuple[str, ...], expected_type: str | None = None
) -> dict[str, Any]:
    """Return the resource (the same dict) when it is a valid R4 instance of a supported type."""
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object (a FHIR resource)")
    resource_type = value.get("resourceType")
    if not isinstance(resource_type, str):
        raise Unprocessable(
            "resourceType is missing",
            issues=[Issue("required", "resourceType is missing", expression=("resourceType",))],
        )
    if expected_type is not None and resource_type != expected_type:
        raise BadRequest(
            f"resourceType {resource_type!r} does not match the URL ({expected_type})",
            issues=[
                Issue(
                    "invalid",
                    f"resourceType does not match the URL ({expected_type})",
                    expression=("resourceType",),
                )
            ],
        )
    if resource_type not in allowed_types or resource_type not in spec().resources:
        raise Unprocessable(
            "resource type is not supported here",
            issues=[
                Issue("not-supported", "resource type not supported", expression=("resourceType",))
            ],
        )
    issues = _Walk(spec()).run(value, resource_type)
    if issues:
        raise Unprocessable(f"{resource_type} is not valid FHIR R4", issues=issues)
    return value


class _Walk:
    """One resource's walk; collects at most MAX_ISSUES issues."""

    __slots__ = ("contained_ids", "defs", "fragments", "issues", "spec")

    def __init__(self, s: Spec) -> None:
        self.spec = s
        self.defs = s.definitions
        self.issues: list[Issue] = []
        self.fragments: list[tuple[str, str, bool]] = []
        self.contained_ids: set[str] = set()

    def issue(self, code: str, path: str, message: str) -> None:
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(Issue(code, f"{path}: {message}", expression=(path,)))

    def run(self, resource: dict[str, Any], resource_type: str) -> list[Issue]:
        # (object, definition name, path, depth in contained resources: 0 top, 1 contained)
        stack: list[tuple[dict[str, Any], str, str, int]] = [(resource, resource_type, "", 0)]
        contained = resource.get("contained")
        if isinstance(contained, list):
            for item in contained:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    self.contained_ids.add(item["id"])
        while stack and len(self.issues) < MAX_ISSUES:
            obj, def_name, path, nesting = stack.pop()
            self.visit(obj, def_name, path or def_name, nesting, stack)
        for ref, path, inside_contained in self.fragments:
            if ref == "#":
                if not inside_contained:
                    self.issue(
                        "value",
                        path,
                        "a reference to the container, valid only in a contained resource",
                    )
            elif ref[1:] not in self.contained_ids:
                self.issue("value", path, "no contained resource has this id (ref-1)")
        return self.issues

    def visit(
        self,
        obj: dict[str, Any],
        def_name: str,
        path: str,
        nesting: int,
        stack: list[tuple[dict[str, Any], str, str, int]],
    ) -> None:
        definition = self.defs[def_name]
        props = definition.props
        if not obj:
            self.issue("structure", path, "an object is never empty")
            return
        for key, val in obj.items():
            prop = props.get(key)
            if prop is None:
                if key == "resourceType" and def_name in self.spec.resources:
                    continue  # checked where the resource was dispatched
                if key[:1] == "_":
                    base = props.get(key[1:])
                    if base is not None and base.extensible:
                        self.primitive_extension(obj, key[1:], val, base, path, stack, nesting)
                        continue
                name = key if _SAFE_NAME.fullmatch(key) else "(invalid name)"
                self.issue("structure", f"{path}.{name}", "unknown element")
                continue
            where = f"{path}.{key}"
            if prop.array:
                if not isinstance(val, list):
                    self.issue("structure", where, "must be an array")
                    continue
                if not val:
                    self.issue("structure", where, "an array is never empty")
                    continue
                partner = obj.get("_" + key) if prop.primitive >= 0 else None
                for i, item in enumerate(val):
                    at = f"{where}[{i}]"
                    if item is None:
                        if not (
                            isinstance(partner, list)
                            and i < len(partner)
                            and isinstance(partner[i], dict)
                        ):
                            self.issue("structure", at, "null only where the extension array has")
                        continue
                    self.value(item, prop, at, nesting, stack, def_name, key)
            elif isinstance(val, list):
                self.issue("structure", where, "must not be an array")
            elif val is None:
                self.issue("structure", where, "null is not a value")
            else:
                self.value(val, prop, where, nesting, stack, def_name, key)
        for key in definition.required:
            if key not in obj and "_" + key not in obj:
                self.issue("required", f"{path}.{key}", "required element is missing")
        for stem, required, members in definition.choices:
            present = [m for m in members if m in obj or "_" + m in obj]
            if len(present) > 1:
                self.issue("structure", f"{path}.{stem}[x]", "only one type of a choice element")
            elif required and not present:
                self.issue("required", f"{path}.{stem}[x]", "required element is missing")
        if def_name == "Extension":
            has_value = any(k[:5] == "value" or k[:6] == "_value" for k in obj)
            if has_value == ("extension" in obj):
                self.issue("invariant", path, "an extension has a value or extensions (ext-1)")

    def primitive_extension(
        self,
        obj: dict[str, Any],
        key: str,
        val: Any,
        prop: Prop,
        path: str,
        stack: list[tuple[dict[str, Any], str, str, int]],
        nesting: int,
    ) -> None:
        """``_key``: the id and extensions of a primitive (an array of them if it repeats)."""
        where = f"{path}.{key}"
        if not prop.array:
            if isinstance(val, dict):
                stack.append((val, "Element", where, nesting))
            else:
                self.issue("structure", where, "the extension of a primitive must be an object")
            return
        values = obj.get(key)
        if not isinstance(val, list) or not val:
            self.issue("structure", where, "the extensions of a repeating primitive: an array")
            return
        if values is not None and (not isinstance(values, list) or len(values) != len(val)):
            self.issue("structure", where, "values and their extensions differ in length")
            return
        for i, item in enumerate(val):
            if isinstance(item, dict):
                stack.append((item, "Element", f"{where}[{i}]", nesting))
            elif item is not None or values is None or values[i] is None:
                self.issue("structure", f"{where}[{i}]", "neither a value nor an extension")

    def value(
        self,
        val: Any,
        prop: Prop,
        where: str,
        nesting: int,
        stack: list[tuple[dict[str, Any], str, str, int]],
        def_name: str,
        key: str,
    ) -> None:
        kind = prop.primitive
        if kind < 0:
            if not isinstance(val, dict):
                self.issue("structure", where, "must be an object")
            elif prop.target == "Resource":
                self.resource(val, where, nesting, stack)
            else:
                stack.append((val, prop.target, where, nesting))
            return
        if kind == STRING:
            if not isinstance(val, str):
                self.issue("value", where, f"{prop.target} must be a JSON string")
                return
            if not self.text(val, prop, where):
                return
            if prop.codes is not None and val not in prop.codes:
                self.issue("code-invalid", where, f"code not in the value set {prop.value_set}")
            elif prop.mimetype and not _MIMETYPE.fullmatch(val):
                self.issue("code-invalid", where, "not a mime type (BCP-13)")
            elif prop.dates and not _calendar_date(val):
                self.issue("value", where, f"not a calendar date ({prop.target})")
            elif key == "reference" and def_name == "Reference":
                self.reference(val, where, nesting)
        elif kind == BOOLEAN:
            if val is not True and val is not False:
                self.issue("value", where, "boolean must be JSON true or false")
        elif kind == INTEGER:
            if type(val) is not int:
                self.issue("value", where, f"{prop.target} must be a JSON integer")
            elif not prop.low <= val <= prop.high:
                self.issue("value", where, f"out of range for {prop.target}")
        elif kind == DECIMAL:
            if type(val) is int:
                return
            if type(val) is not float or not math.isfinite(val):
                self.issue("value", where, "decimal must be a JSON number")
        elif kind == XHTML:
            if not isinstance(val, str):
                self.issue("value", where, "xhtml must be a JSON string")
            elif self.text(val, prop, where):
                stripped = val.strip()
                if not (stripped.startswith("<div") and stripped.endswith("</div>")):
                    self.issue("value", where, "narrative is an xhtml div element")
        elif kind == BASE64:
            if not isinstance(val, str):
                self.issue("value", where, "base64Binary must be a JSON string")
            elif self.text(val, prop, where):
                try:
                    binascii.a2b_base64("".join(val.split()).encode("ascii"), strict_mode=True)
                except (binascii.Error, UnicodeEncodeError, ValueError):
                    self.issue("value", where, "not base64 (RFC 4648)")

    def text(self, val: str, prop: Prop, where: str) -> bool:
        if not val:
            self.issue("value", where, "a primitive is never an empty string")
            return False
        if len(val) > MAX_STRING:
            self.issue("too-long", where, "longer than 1 MB")
            return False
        if _BAD_CHARS.search(val):
            self.issue("value", where, "contains a control character")
            return False
        # string and markdown: R4's regex ([ \r\n\t\S]+) read with Unicode's notion of white
        # space would refuse a no-break space or an ideographic space in a survivor's name;
        # the control characters it is there to keep out are refused above.
        if (
            prop.pattern is not None
            and prop.target not in FREE_TEXT
            and not prop.pattern.fullmatch(val)
        ):
            self.issue("value", where, f"not a valid {prop.target}")
            return False
        return True

    def resource(
        self,
        val: dict[str, Any],
        where: str,
        nesting: int,
        stack: list[tuple[dict[str, Any], str, str, int]],
    ) -> None:
        rt = val.get("resourceType")
        if not isinstance(rt, str) or rt not in self.spec.resources:
            self.issue("structure", f"{where}.resourceType", "not an R4 resource type")
        elif nesting >= 1 and where.rsplit(".", 1)[-1].startswith("contained["):
            self.issue("invariant", where, "a contained resource contains none (dom-2)")
        else:
            stack.append((val, rt, where, nesting + 1))

    def reference(self, val: str, where: str, nesting: int) -> None:
        if val[:1] == "#":
            if _FRAGMENT.fullmatch(val):
                self.fragments.append((val, where, nesting >= 1))
            else:
                self.issue("value", where, "not a valid reference to a contained resource")
        elif not self.spec.reference.fullmatch(val):
            self.issue("value", where, "not a valid reference (Type/id, URL, urn:uuid, urn:oid)")


def _calendar_date(val: str) -> bool:
    """Regex-valid date, dateTime or instant: the day exists in its month (leap years too)."""
    if len(val) < 10:
        return True
    year, month, day = int(val[0:4]), int(val[5:7]), int(val[8:10])
    if day <= 28:
        return True
    if month == 2 and day == 29:
        return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return day <= _DAYS[month - 1]
