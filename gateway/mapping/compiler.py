"""A mapping spec (already valid against ``mappings/schema.json``) compiled into engine nodes.

The schema checks shapes; this module checks meaning, and refuses a spec that:

- names a code table that does not exist, or a ``$const`` that is not in the table it looks up;
- reads a ``never_map`` field (SSN, free-text locations, project names): in a ``$field``, a
  ``$fields`` part, a condition, or anywhere in an expression's text;
- uses ``$split`` or ``$each`` anywhere but directly inside an array (they give several items);
- asks for a ``$when`` on a source version it does not declare (``FY2025`` is a typo, not a
  version), a ``$template`` name other than the context's, ``$needs`` of an element it does
  not have, or a JSONata expression that does not parse or uses what specs may not
  (``gateway.mapping.expressions``).

Errors name the JSON path inside the spec (``resources[0].elements.name[0].use``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.mapping import engine
from gateway.mapping.codes import CodeTable
from gateway.mapping.engine import (
    CONVERSIONS,
    Condition,
    Each,
    Lookup,
    Node,
    ResourceRule,
    Struct,
    Value,
    Where,
)
from gateway.mapping.expressions import Expression, ExpressionError
from gateway.mapping.model import MappingVersion

SOURCE_KEYS = frozenset(
    {
        "$field",
        "$fields",
        "$const",
        "$context",
        "$source_id",
        "$template",
        "$expr",
        "$first",
        "$partner_ref",
        "$organization",
    }
)
# With any of these, a $const is mapped at run time (a conversion, a versioned code entry, ...).
SOURCE_MODIFIERS = frozenset(
    {
        "$as",
        "$split",
        "$source_ref",
        "$local_ref",
        "$required",
        "$expected",
        "$unknown",
        "$invalid",
    }
)
CONTEXT_NAMES = frozenset({"partner_id", "partner_kind", "record_type", "source_id", "version"})
FIELDS_JOINER = ":"


class SpecError(ValueError):
    """A spec that cannot be compiled; ``path`` is where in the spec."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '(top level)'}: {message}")
        self.path = path
        self.message = message


def _steps(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _condition_steps(path: str) -> tuple[tuple[str, bool], ...]:
    return tuple((s[:-2], True) if s.endswith("[]") else (s, False) for s in path.split("."))


def _plain_steps(path: str) -> tuple[str, ...]:
    return tuple(s.removesuffix("[]") for s in path.split("."))


class _Compiler:
    def __init__(self, doc: Mapping[str, Any], tables: Mapping[str, CodeTable]) -> None:
        self.doc = doc
        self.tables = tables
        self.source_versions = frozenset(doc["source_versions"])
        self.never = [_plain_steps(p) for p in doc.get("never_map", ())]
        never_names = sorted({steps[-1] for steps in self.never})
        self.never_words = (
            re.compile(r"\b(" + "|".join(re.escape(n) for n in never_names) + r")\b")
            if never_names
            else None
        )
        self.uses_expressions = False

    # never_map ---------------------------------------------------------------------------

    def _reads(self, jpath: str, used: tuple[str, ...], *, container_ok: bool) -> None:
        for never in self.never:
            inside = used[: len(never)] == never
            container = never[: len(used)] == used
            if inside or (container and not container_ok):
                raise SpecError(jpath, "reads a field listed in never_map")

    def _expression(self, jpath: str, text: str) -> Expression:
        if self.never_words is not None and self.never_words.search(text):
            raise SpecError(jpath, "expression names a field listed in never_map")
        try:
            expression = Expression(text)
        except ExpressionError as exc:
            raise SpecError(jpath, f"expression {exc}") from None
        self.uses_expressions = True
        return expression

    # conditions --------------------------------------------------------------------------

    def condition(
        self, spec: Mapping[str, Any], jpath: str, scope: tuple[str, ...], element: str
    ) -> Condition:
        for name, combine in (("all", engine.condition_all), ("any", engine.condition_any)):
            if name in spec:
                return combine(
                    [
                        self.condition(c, f"{jpath}.{name}[{i}]", scope, element)
                        for i, c in enumerate(spec[name])
                    ]
                )
        if "not" in spec:
            return engine.condition_not(self.condition(spec["not"], f"{jpath}.not", scope, element))
        if "version" in spec or "version_in" in spec:
            versions = (
                frozenset([spec["version"]]) if "version" in spec else frozenset(spec["version_in"])
            )
            unknown = versions - self.source_versions
            if unknown:
                raise SpecError(jpath, "names a source version the spec does not declare")
            return engine.condition_version(versions)
        if "expr" in spec:
            expression = self._expression(f"{jpath}.expr", spec["expr"])
            return engine.condition_expr(expression, Where("", "", "", element))
        path = spec["field"]
        self._reads(f"{jpath}.field", scope + _plain_steps(path), container_ok=True)
        steps = _condition_steps(path)
        if "equals" in spec:
            if isinstance(spec["equals"], bool):
                if any(each for _name, each in steps):
                    raise SpecError(f"{jpath}.field", "a boolean condition reads one field")
                return engine.condition_is(steps, spec["equals"])
            return engine.condition_equals(steps, frozenset([spec["equals"]]))
        if "in" in spec:
            return engine.condition_equals(steps, frozenset(spec["in"]))
        return engine.condition_present(steps, bool(spec["present"]))

    def _when(
        self, spec: Mapping[str, Any], jpath: str, scope: tuple[str, ...], element: str
    ) -> Condition | None:
        when = spec.get("$when")
        if when is None:
            return None
        return self.condition(when, f"{jpath}.$when", scope, element)

    # nodes -------------------------------------------------------------------------------

    def node(
        self, spec: Any, jpath: str, element: str, scope: tuple[str, ...], *, in_array: bool
    ) -> Node:
        if isinstance(spec, list):
            if not spec:
                raise SpecError(jpath, "an empty array maps nothing")
            return engine.Array(
                [
                    self.node(item, f"{jpath}[{i}]", element, scope, in_array=True)
                    for i, item in enumerate(spec)
                ]
            )
        if not isinstance(spec, Mapping):  # pragma: no cover (the schema allows no other)
            raise SpecError(jpath, "must be a value spec, an object or an array")
        if SOURCE_KEYS & spec.keys():
            return self.value(spec, jpath, element, scope, in_array=in_array)
        return self.struct(spec, jpath, element, scope, in_array=in_array)

    def struct(
        self,
        spec: Mapping[str, Any],
        jpath: str,
        element: str,
        scope: tuple[str, ...],
        *,
        in_array: bool,
    ) -> Node:
        each = spec.get("$each")
        alias = spec.get("$each_as")
        inner_scope = scope
        if alias is not None and each is None:
            raise SpecError(f"{jpath}.$each_as", "names the row of an $each: give $each")
        if each is not None:
            if not in_array:
                raise SpecError(f"{jpath}.$each", "$each gives several items: use it in an array")
            self._reads(f"{jpath}.$each", scope + _steps(each), container_ok=True)
            inner_scope = scope + _steps(each) if alias is None else scope
        keys = [k for k in spec if not k.startswith("$")]
        if not keys:
            raise SpecError(jpath, "an object needs at least one element")
        elements = [
            (k, self.node(spec[k], f"{jpath}.{k}", f"{element}.{k}", inner_scope, in_array=False))
            for k in keys
        ]
        for name in ("$needs", "$needs_any"):
            missing = [k for k in spec.get(name, ()) if k not in keys]
            if missing:
                raise SpecError(f"{jpath}.{name}", "names an element the object does not have")
        body = Struct(
            elements,
            when=self._when(spec, jpath, inner_scope, element),
            needs=spec.get("$needs", ()),
            needs_any=spec.get("$needs_any", ()),
        )
        if each is None:
            return body
        return Each(_steps(each), body, Where(each, _steps(each)[-1], each, element), alias)

    def value(
        self,
        spec: Mapping[str, Any],
        jpath: str,
        element: str,
        scope: tuple[str, ...],
        *,
        in_array: bool,
    ) -> Node:
        sources = set(SOURCE_KEYS & spec.keys())
        if sources == {"$field", "$expr"}:
            sources = {"$field"}  # the expression transforms the field's value
        if len(sources) != 1:  # pragma: no cover (the schema's oneOf)
            raise SpecError(jpath, "a value spec has exactly one source")
        (kind,) = sources
        required = bool(spec.get("$required", False))
        expected = bool(spec.get("$expected", False))
        when = self._when(spec, jpath, scope, element)
        if kind == "$first":
            alternatives = [
                self.node(alt, f"{jpath}.$first[{i}]", element, scope, in_array=in_array)
                for i, alt in enumerate(spec["$first"])
            ]
            for key in ("$as", "$table", "$split", "$source_ref", "$local_ref"):
                if key in spec:
                    raise SpecError(f"{jpath}.{key}", "give it to the alternatives of $first")
            return engine.First(
                alternatives,
                where=Where("", "", "", element),
                when=when,
                required=required,
                expected=expected,
            )

        if kind == "$const" and not (SOURCE_MODIFIERS & spec.keys()):
            const = self._const(spec, jpath, when)
            if const is not None:
                return const
        where = Where("", "", "", element)
        source: engine.Source
        default_as = "string"
        many = False
        if kind == "$field":
            path = spec["$field"]
            self._reads(f"{jpath}.$field", scope + _steps(path), container_ok=False)
            source = engine.source_field(_steps(path))
            where = Where(path, _steps(path)[-1], path, element)
            if "$expr" in spec:
                expression = self._expression(f"{jpath}.$expr", spec["$expr"])
                source = engine.source_transformed(source, expression, where, required=required)
                default_as = "raw"
        elif kind == "$fields":
            paths = spec["$fields"]
            for i, path in enumerate(paths):
                self._reads(f"{jpath}.$fields[{i}]", scope + _steps(path), container_ok=False)
            source = engine.source_fields([_steps(p) for p in paths], FIELDS_JOINER)
            name = "+".join(paths)
            where = Where(name, "+".join(_steps(p)[-1] for p in paths), name, element)
        elif kind == "$const":
            source = engine.source_const(spec["$const"])
            default_as = "raw"
        elif kind == "$context":
            source = engine.source_context(spec["$context"])
        elif kind == "$source_id":
            source = engine.source_context("source_id")
        elif kind == "$template":
            source = engine.source_template(self._template(f"{jpath}.$template", spec["$template"]))
        elif kind == "$expr":
            expression = self._expression(f"{jpath}.$expr", spec["$expr"])
            source = engine.source_expr(expression, where, required=required)
            default_as = "raw"
            many = in_array
        elif kind == "$organization":
            target = spec["$organization"]
            key_node = self.node(
                target["key"], f"{jpath}.$organization.key", element, scope, in_array=False
            )
            key_where = key_node.where if isinstance(key_node, Value) else where
            source = engine.source_organization(key_node, target["prefix"], key_where)
            default_as = "raw"
        else:  # $partner_ref
            source = engine.source_partner_ref()
            default_as = "raw"

        lookup = None
        table_name = spec.get("$table")
        if table_name is not None:
            table = self.tables.get(table_name)
            if table is None:
                raise SpecError(f"{jpath}.$table", "names a code table that does not exist")
            if kind == "$const" and str(spec["$const"]) not in table.entries:
                raise SpecError(f"{jpath}.$const", "is not a value of its code table")
            lookup = Lookup(table, spec.get("$output", "coding"), spec.get("$unknown", "problem"))
            default_as = "string"
        else:
            for key in ("$output", "$unknown"):
                if key in spec:
                    raise SpecError(f"{jpath}.{key}", "only means something with $table")
        convert = CONVERSIONS[spec.get("$as", default_as)]

        wrap: engine.Wrap | None = None
        if "$source_ref" in spec and "$local_ref" in spec:
            raise SpecError(jpath, "$source_ref and $local_ref exclude each other")
        if "$source_ref" in spec:
            target = spec["$source_ref"]
            wrap = engine.wrap_source_ref(target["resourceType"], target["record_type"])
        elif "$local_ref" in spec:
            wrap = engine.wrap_local_ref(spec["$local_ref"])

        split = spec.get("$split")
        if split is not None and not in_array:
            raise SpecError(f"{jpath}.$split", "$split gives several items: use it inside an array")
        return Value(
            source=source,
            where=where,
            convert=convert,
            lookup=lookup,
            wrap=wrap,
            split=split,
            when=when,
            required=required,
            expected=expected,
            many=many,
            invalid_blocks=spec.get("$invalid") == "blocking",
        )

    def _const(self, spec: Mapping[str, Any], jpath: str, when: Condition | None) -> Node | None:
        """A ``$const`` (possibly looked up in a table) evaluated once, here; None when its code
        entry depends on the source version (then it is looked up per record)."""
        value = spec["$const"]
        labels: frozenset[str] = frozenset()
        table_name = spec.get("$table")
        if table_name is not None:
            table = self.tables.get(table_name)
            if table is None:
                raise SpecError(f"{jpath}.$table", "names a code table that does not exist")
            entry = table.entries.get(str(value))
            if entry is None or entry.code is None:
                raise SpecError(f"{jpath}.$const", "is not a value of its code table")
            if entry.versions is not None:
                return None
            output = spec.get("$output", "coding")
            if output == "code":
                value = entry.code
            elif output == "coding":
                value = entry.coding()
            else:
                value = {"coding": [entry.coding()]}
            labels = entry.labels
        else:
            value = engine.prune(value)
            if value is engine.ABSENT:
                raise SpecError(f"{jpath}.$const", "is empty (FHIR has no empty values)")
        if engine.has_bad_chars(value):
            raise SpecError(f"{jpath}.$const", "contains control characters")
        return engine.Const(value, labels=labels, when=when)

    def _template(self, jpath: str, template: str) -> str:
        for _literal, name, spec, conversion in string.Formatter().parse(template):
            if name is None:
                continue
            if name not in CONTEXT_NAMES or spec or conversion:
                raise SpecError(jpath, "a template may name only {partner_id}, {partner_kind}, "
                                "{record_type}, {source_id} or {version}")  # fmt: skip
        return template

    # the spec ----------------------------------------------------------------------------

    def resources(self) -> list[ResourceRule]:
        rules = []
        for i, rule in enumerate(self.doc["resources"]):
            jpath = f"resources[{i}]"
            resource_type = rule["resourceType"]
            body = self.struct(
                rule["elements"], f"{jpath}.elements", resource_type, (), in_array=False
            )
            assert isinstance(body, Struct)
            when = rule.get("$when")
            condition = self.condition(when, f"{jpath}.$when", (), resource_type) if when else None
            rules.append(
                ResourceRule(
                    resource_type=resource_type,
                    when=condition,
                    body=body,
                    key=self._key(rule.get("key"), f"{jpath}.key", resource_type),
                    each=self._resource_each(rule.get("each"), f"{jpath}.each", resource_type),
                    labels=self._labels(rule.get("labels", ()), f"{jpath}.labels"),
                )
            )
        return rules

    def _key(self, spec: Any, jpath: str, resource_type: str) -> engine.ResourceKey | None:
        if spec is None:
            return None
        element = f"{resource_type} key"
        node = self.node(spec["source_id"], f"{jpath}.source_id", element, (), in_array=False)
        where = node.where if isinstance(node, Value) else Where("", "", "", element)
        return engine.ResourceKey(spec["record_type"], node, where)

    def _resource_each(
        self, spec: Any, jpath: str, resource_type: str
    ) -> engine.ResourceEach | None:
        if spec is None:
            return None
        path = spec["field"]
        self._reads(f"{jpath}.field", _steps(path), container_ok=True)
        return engine.ResourceEach(
            _steps(path), spec["as"], Where(path, _steps(path)[-1], path, resource_type)
        )

    def _labels(self, specs: Sequence[Any], jpath: str) -> tuple[engine.LabelRule, ...]:
        out = []
        for i, spec in enumerate(specs):
            path = spec["field"]
            self._reads(f"{jpath}[{i}].field", _plain_steps(path), container_ok=False)
            table = self.tables.get(spec["table"])
            if table is None:
                raise SpecError(f"{jpath}[{i}].table", "names a code table that does not exist")
            if not any(entry.labels for entry in table.entries.values()):
                raise SpecError(f"{jpath}[{i}].table", "the code table labels nothing")
            out.append(
                engine.LabelRule(_condition_steps(path), table, bool(spec.get("prefix", False)))
            )
        return tuple(out)

    def checks(self) -> list[engine.Check]:
        out = []
        for i, check in enumerate(self.doc.get("checks", ())):
            jpath = f"checks[{i}]"
            path = check["field"]
            self._reads(f"{jpath}.field", _plain_steps(path), container_ok=False)
            table = self.tables.get(check["table"])
            if table is None:
                raise SpecError(f"{jpath}.table", "names a code table that does not exist")
            column = _plain_steps(path)[-1]
            out.append(
                engine.Check(
                    steps=_condition_steps(path),
                    lookup=Lookup(table, "code", "problem"),
                    where=Where(path, column, path, ""),
                )
            )
        return out

    def strip(self) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
        tree: dict[str, Any] = {}
        for steps in self.never:
            node = tree
            for step in steps[:-1]:
                child = node.setdefault(step, {})
                if child is None:  # a parent is removed whole already
                    break
                node = child
            else:
                node[steps[-1]] = None
        return _stripper(tree)


def _stripper(tree: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    """A function returning the record without the never_map paths (a copy only where one is
    present; rows of lists are stripped one by one)."""
    if not tree:
        return lambda fields: fields

    def strip_value(value: Any, sub: Mapping[str, Any]) -> Any:
        if isinstance(value, Mapping):
            return strip(value, sub)
        if isinstance(value, list):
            return [strip_value(v, sub) for v in value]
        return value

    def strip(fields: Mapping[str, Any], sub: Mapping[str, Any]) -> Mapping[str, Any]:
        out: dict[str, Any] | None = None
        for name, below in sub.items():
            if name not in fields:
                continue
            if out is None:
                out = dict(fields)
            if below is None:
                del out[name]
            else:
                out[name] = strip_value(out[name], below)
        return fields if out is None else out

    return lambda fields: strip(fields, tree)


def compile_spec(
    doc: Mapping[str, Any], tables: Mapping[str, CodeTable], *, sha256: str
) -> engine.RecordMapping:
    """The engine ``Mapping`` for a schema-valid spec document; SpecError otherwise."""
    compiler = _Compiler(doc, tables)
    resources = compiler.resources()
    checks = compiler.checks()
    return engine.RecordMapping(
        version=MappingVersion(
            system=doc["system"],
            record_type=doc["record_type"],
            version=doc["version"],
            sha256=sha256,
        ),
        source_versions=compiler.source_versions,
        resources=resources,
        checks=checks,
        strip=compiler.strip(),
        uses_expressions=compiler.uses_expressions,
    )


def tables_used(doc: Any) -> set[str]:
    """The code table names a spec document refers to (``$table`` and ``checks``)."""
    found: set[str] = set()
    stack: list[Any] = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            name = item.get("$table")
            if isinstance(name, str):
                found.add(name)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    if isinstance(doc, Mapping):
        for check in doc.get("checks", ()) or ():
            if isinstance(check, Mapping) and isinstance(check.get("table"), str):
                found.add(check["table"])
        for rule in doc.get("resources", ()) or ():
            if not isinstance(rule, Mapping):
                continue
            for label in rule.get("labels", ()) or ():
                if isinstance(label, Mapping) and isinstance(label.get("table"), str):
                    found.add(label["table"])
    return found


__all__: Sequence[str] = ("SpecError", "compile_spec", "tables_used")
