"""The ``SourceRecord`` contract: what an adapter (``adapters/``) hands the ingest pipeline.

An adapter knows a partner system's transport and file format and nothing of FHIR: it yields
``SourceRecord``s (one record of the source, its fields as the source names them) and
``SourceProblem``s (input it could not read, with the place and the reason, and the bytes it
could not read, so that nothing is lost: the pipeline quarantines them). The mappings
(``mappings/``) turn records into FHIR; the pipeline writes them through the one write path.

This module is the only part of ``gateway`` an adapter may import (``make lint`` checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from: the source (a file name inside the export, a URL path, an
    MLLP peer), the place inside it (``row 12``, ``page 3, item 4``, ``message MSG00017``) and
    the source bytes of that record (kept, encrypted, only if it is quarantined). ``source`` and
    ``locator`` never hold PHI: they are shown to operators."""

    source: str
    locator: str
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One record of a source system.

    ``system``: ``hmis-csv`` | ``legalserver`` | ``hl7v2`` | ``fhir``; ``record_type``: the
    source's own name for the kind of record (``Client``, ``Enrollment``, ``matter``,
    ``REF_I12``, ``ADT_A01``, ...); ``source_id``: its identifier in the source (PersonalID,
    EnrollmentID, matter uuid, RF1-6); ``fields``: the record's values under the source's own
    names (JSON-like: str, int, float, bool, None, lists and dicts of those);
    ``version``: the source format's version where it has one (``FY2024``, ``FY2026``, ``2.5.1``).
    """

    system: str
    record_type: str
    source_id: str
    fields: Mapping[str, Any]
    origin: Origin
    version: str = ""


@dataclass(frozen=True, slots=True)
class Place:
    """Where in a record a problem is: a column (CSV), a segment and field (HL7 v2, e.g.
    ``PID``/``PID-7``), or a JSON path (``data[3].date_opened``). Names, never values."""

    file: str = ""
    row: int | None = None
    column: str = ""
    segment: str = ""
    field: str = ""


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """Input an adapter could not turn into a record: quarantined with its reason and bytes.

    ``reason`` says what is wrong without quoting the value (``date is not yyyy-mm-dd``,
    ``PersonalID appears twice``); ``fatal`` marks a problem that refuses the whole source (a
    VSP export from a partner that is not a shelter, more than one Export row)."""

    system: str
    record_type: str
    reason: str
    origin: Origin
    places: tuple[Place, ...] = ()
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class SourceNotice:
    """Something an operator should know that is not a problem with a record (``unknown
    column X ignored``, ``read as Windows-1252``): reported once, never PHI."""

    system: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


SourceItem = SourceRecord | SourceProblem | SourceNotice
