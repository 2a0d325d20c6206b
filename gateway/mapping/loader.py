"""Loading ``mappings/``: the only I/O of the mapping package, done once at start-up.

Layout (``GATEWAY_MAPPINGS_DIR``)::

    schema.json                 # JSON Schema: the document is a spec, $defs/codeTable a table
    codes/<table>.yaml          # code tables, file name = table name
    <system>/<record_type>.yaml # one spec per source record type (hmis-csv/Client.yaml, ...)

Every file is read with a YAML loader that builds only plain data (no tags, so no Python
objects) and refuses duplicated keys (a second ``gender:`` would silently replace the first),
then validated against the schema, then compiled (``gateway.mapping.compiler``). Each spec's
``MappingVersion`` carries its declared ``version`` and a SHA-256 of its content together with
the code tables it uses, so Provenance can say exactly which mapping made a resource.
``MappingSpecError.problems`` lists every problem found, each ``file: path: why``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError

from gateway.mapping import engine
from gateway.mapping.codes import CodeTable, table_from_dict
from gateway.mapping.compiler import SpecError, compile_spec, tables_used
from gateway.mapping.model import Mapped, MappingContext, MappingProblem, MappingVersion
from gateway.vocabulary.source import Place, SourceRecord

SCHEMA_FILE = "schema.json"
CODES_DIR = "codes"
MAX_FILE_BYTES = 1024 * 1024


class MappingSpecError(Exception):
    """The mappings cannot be used; ``problems`` has one ``file: path: why`` each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader (plain data only) that refuses a key given twice in one mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: let the base constructor report it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, "a key is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, file: str) -> Any:
    """Plain data from YAML text; MappingSpecError naming the file and line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise MappingSpecError([f"{file}: {where}: {problem}"]) from None


def read_schema(mappings_dir: Path) -> dict[str, Any]:
    path = Path(mappings_dir) / SCHEMA_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MappingSpecError([f"{SCHEMA_FILE}: cannot read ({type(exc).__name__})"]) from None
    if not isinstance(doc, dict):
        raise MappingSpecError([f"{SCHEMA_FILE}: the schema must be an object"])
    Draft202012Validator.check_schema(doc)
    return doc


def _validator(schema: Mapping[str, Any], definition: str | None) -> Draft202012Validator:
    if definition is None:
        return Draft202012Validator(dict(schema))
    return Draft202012Validator({**schema, "$ref": f"#/$defs/{definition}"})


def _most_specific(error: ValidationError) -> ValidationError:
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return error


def _json_path(path: Iterable[Any]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def schema_problems(
    doc: Any, schema: Mapping[str, Any], *, file: str, definition: str | None = None
) -> list[str]:
    """Every schema violation of a document, ``file: path: message``."""
    try:
        errors = sorted(
            _validator(schema, definition).iter_errors(doc),
            key=lambda e: (_json_path(e.absolute_path), e.message),
        )
    except (TypeError, ValueError) as exc:  # e.g. keys that are not strings
        return [f"{file}: (top level): cannot be checked ({type(exc).__name__})"]
    out = []
    for error in errors:
        specific = _most_specific(error)
        where = _json_path(specific.absolute_path) or "(top level)"
        out.append(f"{file}: {where}: {specific.message}")
    return out


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def content_hash(doc: Any, table_docs: Mapping[str, Any]) -> str:
    """SHA-256 of a spec and the code tables it uses (canonical JSON, keys sorted)."""
    return hashlib.sha256(_canonical({"spec": doc, "tables": dict(table_docs)})).hexdigest()


def _read(path: Path, root: Path) -> tuple[str, str]:
    name = path.relative_to(root).as_posix()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise MappingSpecError([f"{name}: larger than {MAX_FILE_BYTES} bytes"])
        return name, path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingSpecError([f"{name}: cannot read ({type(exc).__name__})"]) from None


def load_code_tables(
    mappings_dir: Path, schema: Mapping[str, Any]
) -> tuple[dict[str, CodeTable], dict[str, Any]]:
    """Every table in ``codes/`` (validated), and their documents (for content hashes)."""
    root = Path(mappings_dir)
    tables: dict[str, CodeTable] = {}
    docs: dict[str, Any] = {}
    problems: list[str] = []
    for path in sorted((root / CODES_DIR).glob("*.yaml")):
        try:
            file, text = _read(path, root)
            doc = parse_yaml(text, file)
        except MappingSpecError as exc:
            problems.extend(exc.problems)
            continue
        found = schema_problems(doc, schema, file=file, definition="codeTable")
        if not found and doc["name"] != path.stem:
            found = [f"{file}: name: must be the file name ({path.stem})"]
        if not found:
            try:
                tables[doc["name"]] = table_from_dict(doc)
                docs[doc["name"]] = doc
            except ValueError as exc:
                found = [f"{file}: {exc}"]
        problems.extend(found)
    if problems:
        raise MappingSpecError(problems)
    return tables, docs


def compile_document(
    doc: Any,
    *,
    schema: Mapping[str, Any],
    tables: Mapping[str, CodeTable],
    table_docs: Mapping[str, Any] | None = None,
    file: str = "<spec>",
) -> engine.RecordMapping:
    """Validate a spec document against the schema and compile it; MappingSpecError."""
    problems = schema_problems(doc, schema, file=file)
    if problems:
        raise MappingSpecError(problems)
    used = tables_used(doc)
    missing = sorted(name for name in used if name not in tables)
    if missing:
        raise MappingSpecError([f"{file}: $table: no code table named {n}" for n in missing])
    docs = table_docs or {}
    sha = content_hash(doc, {name: docs.get(name) for name in sorted(used)})
    try:
        return compile_spec(doc, tables, sha256=sha)
    except SpecError as exc:
        raise MappingSpecError([f"{file}: {exc}"]) from None


class MappingSet:
    """The loaded specs, by (system, record_type)."""

    def __init__(self, mappings: Iterable[engine.RecordMapping]) -> None:
        self._by_key: dict[tuple[str, str], engine.RecordMapping] = {}
        for mapping in mappings:
            key = (mapping.system, mapping.record_type)
            if key in self._by_key:
                raise MappingSpecError([f"{key[0]}/{key[1]}: two specs for one record type"])
            self._by_key[key] = mapping

    def get(self, system: str, record_type: str) -> engine.RecordMapping | None:
        return self._by_key.get((system, record_type))

    def __iter__(self) -> Iterator[engine.RecordMapping]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    @property
    def versions(self) -> list[MappingVersion]:
        return [m.version for m in self]

    def apply(self, record: SourceRecord, context: MappingContext) -> Mapped:
        """Map a record with the spec for its system and record type; a blocking problem when
        there is none (the record type is not PHI; nothing of its fields is read)."""
        mapping = self.get(record.system, record.record_type)
        if mapping is None:
            return Mapped(
                problems=[
                    MappingProblem(
                        place=Place(file=record.origin.source),
                        reason=f"no mapping for {record.system} record type {record.record_type}",
                        blocking=True,
                    )
                ]
            )
        return mapping.apply(record, context)


def load_mappings(mappings_dir: Path) -> MappingSet:
    """Read, validate and compile every spec under ``mappings_dir``; MappingSpecError listing
    every problem of every file."""
    root = Path(mappings_dir)
    schema = read_schema(root)
    tables, table_docs = load_code_tables(root, schema)
    problems: list[str] = []
    mappings: list[engine.RecordMapping] = []
    for path in sorted(root.glob("*/*.yaml")):
        if path.parent.name == CODES_DIR:
            continue
        try:
            file, text = _read(path, root)
            doc = parse_yaml(text, file)
            mapping = compile_document(
                doc, schema=schema, tables=tables, table_docs=table_docs, file=file
            )
        except MappingSpecError as exc:
            problems.extend(exc.problems)
            continue
        if (mapping.system, mapping.record_type) != (path.parent.name, path.stem):
            problems.append(f"{file}: must be named <system>/<record_type>.yaml after its content")
            continue
        mappings.append(mapping)
    if problems:
        raise MappingSpecError(problems)
    return MappingSet(mappings)
