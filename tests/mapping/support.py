"""Shared by the mapping tests: the shipped mappings, a partner, records as JSON, the R4
validator, and the network's label tables."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from gateway.consent.labels import LabelTables, load_label_tables
from gateway.mapping import (
    Mapped,
    MappingContext,
    MappingSet,
    RecordMapping,
    SourceKey,
    compile_document,
    load_code_tables,
    load_mappings,
    read_schema,
    rewrite_placeholders,
)
from gateway.mapping.codes import CodeTable
from gateway.mapping.loader import parse_yaml
from gateway.vocabulary.source import Origin, SourceRecord
from gateway.write.validate import validate_resource

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"
GOLDEN = Path(__file__).resolve().parent / "golden"
SHELTER = MappingContext(partner_id="riverside-shelter", partner_kind="shelter")
R4_TYPES = frozenset({"Patient", "EpisodeOfCare", "CarePlan", "Consent"})


@cache
def mappings() -> MappingSet:
    return load_mappings(MAPPINGS)


@cache
def schema() -> dict[str, Any]:
    return read_schema(MAPPINGS)


@cache
def tables() -> dict[str, CodeTable]:
    return load_code_tables(MAPPINGS, schema())[0]


@cache
def label_tables() -> LabelTables:
    return load_label_tables(ROOT / "consent_policies")


def compile_spec(doc: dict[str, Any]) -> RecordMapping:
    """A spec written in a test, compiled against the shipped schema and code tables."""
    return compile_document(doc, schema=schema(), tables=tables())


def context_from_json(doc: dict[str, Any]) -> MappingContext:
    """A golden input's partner (``context``; the HMIS goldens have none: the shelter)."""
    context = doc.get("context")
    if context is None:
        return SHELTER
    return MappingContext(
        partner_id=context["partner_id"],
        partner_kind=context["partner_kind"],
        organizations=context.get("organizations", {}),
    )


def record_from_json(doc: dict[str, Any]) -> SourceRecord:
    origin = doc.get("origin") or {}
    return SourceRecord(
        system=doc["system"],
        record_type=doc["record_type"],
        source_id=doc["source_id"],
        fields=doc["fields"],
        origin=Origin(source=origin.get("source", ""), locator=origin.get("locator", "")),
        version=doc.get("version", ""),
    )


def record(
    record_type: str,
    source_id: str,
    fields: dict[str, Any],
    *,
    version: str = "FY2026",
    file: str | None = None,
    row: int = 2,
) -> SourceRecord:
    return SourceRecord(
        system="hmis-csv",
        record_type=record_type,
        source_id=source_id,
        fields=fields,
        origin=Origin(source=file or f"{record_type}.csv", locator=f"row {row}"),
        version=version,
    )


def apply(rec: SourceRecord, context: MappingContext = SHELTER) -> Mapped:
    return mappings().apply(rec, context)


def resource(mapped: Mapped, resource_type: str) -> dict[str, Any]:
    found = [r.resource for r in mapped.resources if r.key.resource_type == resource_type]
    assert len(found) == 1, f"expected one {resource_type}, got {len(found)}"
    return found[0]


def local(key: SourceKey) -> str:
    """The local reference the pipeline would give a placeholder (an id per key)."""
    return f"{key.resource_type}/{key.record_type.lower()}-{key.source_id.lower()}"


def resolved(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = rewrite_placeholders(doc, local)
    return out


def validate_r4(doc: dict[str, Any]) -> None:
    validate_resource(doc, allowed_types=R4_TYPES)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def parse_yaml_file(path: Path) -> Any:
    return parse_yaml(path.read_text(encoding="utf-8"), path.name)
