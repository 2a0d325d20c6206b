"""The declarative mapping engine: a source record → FHIR R4 resources, as ``mappings/`` says.

In the flow (``adapters/`` → **mappings** → ``gateway/ingest`` → store): an adapter yields
``SourceRecord``s; ``load_mappings(dir)`` reads and compiles the YAML specs once;
``MappingSet.apply(record, context)`` gives a ``Mapped``: resources (FHIR dicts without ``id``,
each with its ``SourceKey``, references to other mapped records as placeholders, see
``gateway.mapping.placeholders``) and problems (place and reason, never a source value). The
spec format is in ``docs/mappings.md``; the engine's rules in ``gateway.mapping.engine``.

Imports only ``gateway.vocabulary`` and third-party libraries; reads files only when loading.
"""

from __future__ import annotations

from gateway.mapping.codes import CodeEntry, CodeTable
from gateway.mapping.engine import RecordMapping, organization_lookup_key
from gateway.mapping.loader import (
    MappingSet,
    MappingSpecError,
    compile_document,
    load_code_tables,
    load_mappings,
    read_schema,
)
from gateway.mapping.model import (
    Mapped,
    MappedResource,
    MappingContext,
    MappingProblem,
    MappingVersion,
)
from gateway.mapping.placeholders import (
    PREFIX,
    SourceKey,
    parse_source_reference,
    rewrite_placeholders,
    source_reference,
)

__all__ = [
    "PREFIX",
    "CodeEntry",
    "CodeTable",
    "Mapped",
    "MappedResource",
    "MappingContext",
    "MappingProblem",
    "MappingSet",
    "MappingSpecError",
    "MappingVersion",
    "RecordMapping",
    "SourceKey",
    "compile_document",
    "load_code_tables",
    "load_mappings",
    "organization_lookup_key",
    "parse_source_reference",
    "read_schema",
    "rewrite_placeholders",
    "source_reference",
]
