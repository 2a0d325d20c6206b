"""Retrying a held item: the record rebuilt from what the quarantine kept, through the
pipeline again (after its mapping, the partners file or the source was fixed)."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.hl7v2 import parse_message
from gateway.ingest.pipeline import IngestPipeline
from gateway.ingest.quarantine import QuarantineDetail
from gateway.vocabulary.source import Origin, Place, SourceRecord


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    landed: bool
    reason: str = ""
    places: tuple[Place, ...] = ()


NOT_RETRYABLE = (
    "only a record that was read, or an HL7 v2 message, can be retried: fix the source and "
    "ingest it again"
)


def retry_item(pipeline: IngestPipeline, held: QuarantineDetail) -> RetryOutcome:
    origin = Origin(held.source, held.locator, held.raw)
    if held.fields is not None:
        record = SourceRecord(
            held.system, held.record_type, held.source_id, held.fields, origin, held.source_version
        )
    elif held.system == "hl7v2" and held.raw:
        parsed = parse_message(held.raw, source=held.source, locator=held.locator)
        if not isinstance(parsed, SourceRecord):
            return RetryOutcome(False, parsed.reason, parsed.places)
        record = parsed
    else:
        return RetryOutcome(False, NOT_RETRYABLE)
    outcome = pipeline.ingest_record(record, hold=False)
    if outcome.status == "stored":
        return RetryOutcome(True)
    return RetryOutcome(False, outcome.reason, outcome.places)
