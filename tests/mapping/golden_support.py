"""Reading the golden cases of tests/mapping/golden/<system>/ and resolving their placeholders
as the pipeline would (an opaque id per key)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gateway.mapping import MappingContext, SourceKey
from gateway.vocabulary.source import SourceRecord
from tests.mapping.support import GOLDEN, context_from_json, record_from_json


def fake_local(key: SourceKey) -> str:
    """A local reference per key, as the pipeline's ledger gives one (an opaque FHIR id)."""
    digest = hashlib.sha256("\x1f".join(key).encode()).hexdigest()[:32]
    return f"{key.resource_type}/{digest}"


def golden_doc(system: str, case: str, kind: str = "input") -> Any:
    return json.loads((GOLDEN / system / f"{case}.{kind}.json").read_text(encoding="utf-8"))


def golden(system: str, case: str) -> tuple[SourceRecord, MappingContext]:
    """A golden input as the record and the partner it comes from."""
    doc = golden_doc(system, case)
    return record_from_json(doc), context_from_json(doc)
