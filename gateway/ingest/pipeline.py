"""The ingest pipeline: a partner's source records through the mappings into the one write path.

In the flow (``adapters/`` → ``gateway/mapping`` → **here** → the store): an adapter yields
``SourceItem``s; each ``SourceRecord`` is mapped (``MappingSet.apply``) to FHIR resources keyed
by their ``SourceKey``; the ledger (``gateway.ingest.ledger``) gives each key the gateway's
id for it (a random id, reserved before anything is written so a crash never makes two);
placeholders become local references; each resource is checked (strict R4, the same
``write.admit.check`` a REST write takes) and the batch is written through the partner's
``ConsentedStore`` (labels, contributor, Consent authority, audit), with one Provenance naming
the batch's records, the partner, the source and the mapping versions.

Idempotent: a resource whose content (and mapping) is what the ledger last wrote for its key is
not written again, so the same export twice creates nothing and no new versions, and a changed
record makes one new version of what it changed.

Nothing is lost: a ``SourceProblem`` (input the adapter could not read), a record no mapping
accepts (a blocking problem) and a record one of whose resources is not valid R4 go to the
quarantine with their bytes and fields (encrypted) and the reason (places and element paths,
never values); a record that mapped with non-blocking problems lands with what mapped *and* is
quarantined with the reasons, so that the part left out is not lost either. A fatal problem (a
VSP export from a partner that is not a shelter) stops the run; what came before it stays.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import orjson

from gateway.clock import Clock, SystemClock
from gateway.errors import GatewayError
from gateway.ingest.ledger import LedgerEntry, LedgerKey
from gateway.ingest.quarantine import NewQuarantine
from gateway.mapping import (
    PREFIX,
    Mapped,
    MappingContext,
    MappingSet,
    MappingVersion,
    SourceKey,
    parse_source_reference,
    rewrite_placeholders,
)
from gateway.store.port import StoredResource
from gateway.vocabulary.dates import stamp
from gateway.vocabulary.source import Place, SourceItem, SourceNotice, SourceProblem, SourceRecord
from gateway.write.admit import Checked, check

DEFAULT_BATCH = 500
PROVENANCE_TARGETS = 500  # a Provenance names at most this many records (one per batch)
_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_ENTITY_ROLE_SOURCE = "source"


class BatchWriter(Protocol):
    """What a batch is written through: the partner's store (``ConsentedStore``)."""

    def write_many(self, resources: Sequence[Checked]) -> list[StoredResource]: ...


class LedgerPort(Protocol):
    def reserve(self, keys: Iterable[LedgerKey]) -> dict[LedgerKey, LedgerEntry]: ...

    def unchanged(
        self, entry: LedgerEntry, content: Mapping[str, Any], mapping_sha256: str
    ) -> bool: ...

    def mark_written(self, items: Iterable[tuple[LedgerEntry, Mapping[str, Any], str]]) -> None: ...


class QuarantinePort(Protocol):
    def add(self, items: Sequence[NewQuarantine]) -> list[str]: ...


@dataclass
class Counts:
    """Per source record type: what was read and what became of it."""

    read: int = 0
    landed: int = 0  # records whose resources were all written or already there
    quarantined: int = 0

    def as_json(self) -> dict[str, int]:
        return {"read": self.read, "landed": self.landed, "quarantined": self.quarantined}


@dataclass
class ResourceCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass
class IngestSummary:
    """What a run did. ``exit_code``: 0 when every record landed, 3 when some input was
    quarantined, 1 when a fatal problem stopped the run."""

    records: dict[tuple[str, str], Counts] = field(default_factory=dict)
    resources: dict[str, ResourceCounts] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    fatal: str | None = None
    provenance: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.fatal is not None:
            return 1
        return 3 if self.quarantined else 0

    def counts(self, system: str, record_type: str) -> Counts:
        return self.records.setdefault((system, record_type), Counts())

    def resource(self, resource_type: str) -> ResourceCounts:
        return self.resources.setdefault(resource_type, ResourceCounts())


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What became of one record (the MLLP listener answers with it): ``stored`` (written, or
    already there unchanged), or ``quarantined`` with the reason and places."""

    status: Literal["stored", "quarantined"]
    reason: str = ""
    places: tuple[Place, ...] = ()
    quarantine_id: str = ""


@dataclass
class _Prepared:
    record: SourceRecord
    mapped: Mapped
    # The placeholders each mapped resource holds (what it points at), found once.
    refers_to: list[set[SourceKey]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.refers_to:
            self.refers_to = [_placeholders(r.resource) for r in self.mapped.resources]


@dataclass(frozen=True, slots=True)
class _Write:
    entry: LedgerEntry
    checked: Checked
    content: dict[str, Any]  # as mapped, with local references: what the ledger digests
    sha: str  # the mapping's


@dataclass
class _Ready:
    """A record whose resources are checked and carry their ids."""

    record: SourceRecord
    mapped: Mapped
    writes: list[_Write]
    unchanged: list[str]  # resource types of resources already stored as they are


class IngestPipeline:
    """One partner's ingest. ``writers`` makes the partner's own store (``ConsentedStore``), a
    fresh one per batch (its audit trail and Consent cache live as long as the batch, so a
    long run or a listener holds no more than one batch's): every resource is written as that
    partner's, under the same rules as its REST writes.
    ``context`` is the mapping's view of the partner (id, kind, the network's organizations)."""

    def __init__(
        self,
        *,
        writers: Callable[[], BatchWriter],
        mappings: MappingSet,
        ledger: LedgerPort,
        quarantine: QuarantinePort,
        context: MappingContext,
        batch_size: int = DEFAULT_BATCH,
        clock: Clock | None = None,
        source_label: str = "",
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self._writers = writers
        self._mappings = mappings
        self._ledger = ledger
        self._quarantine = quarantine
        self._context = context
        self._batch_size = min(batch_size, PROVENANCE_TARGETS)
        self._clock = clock or SystemClock()
        self._source_label = source_label
        # While ingest_records runs: each record's held entry (by the record's identity).
        self._track: dict[int, NewQuarantine] | None = None

    def record_types(self, system: str) -> set[str]:
        """The record types of ``system`` the mappings map."""
        return {m.record_type for m in self._mappings if m.system == system}

    # -- whole sources ------------------------------------------------------------------------

    def run(
        self,
        items: Iterable[SourceItem],
        *,
        on_item: Callable[[SourceItem], None] | None = None,
    ) -> IngestSummary:
        """Every item of a source; the summary says what landed and what was quarantined."""
        summary = IngestSummary()
        batch: list[_Prepared] = []
        batch_keys: set[SourceKey] = set()
        held: list[NewQuarantine] = []
        for item in items:
            if on_item is not None:
                on_item(item)
            if isinstance(item, SourceNotice):
                summary.notices.append(item.message)
                continue
            if isinstance(item, SourceProblem):
                summary.counts(item.system, item.record_type or "(unreadable)").quarantined += 1
                held.append(self._held_problem(item))
                if item.fatal:
                    summary.fatal = item.reason
                    break
                continue
            counts = summary.counts(item.system, item.record_type)
            counts.read += 1
            mapped = self._mappings.apply(item, self._context)
            if mapped.blocked or not mapped.resources:
                counts.quarantined += 1
                held.append(self._held_record(item, _mapping_reason(mapped), mapped))
                continue
            keys = {r.key for r in mapped.resources}
            if keys & batch_keys or len(batch) >= self._batch_size:
                # The same resource twice in one batch (two exports of one client): the first
                # is written before the second is prepared, so the second is its update.
                self._flush(batch, summary, held)
                batch, batch_keys = [], set()
            batch.append(_Prepared(item, mapped))
            batch_keys |= keys
            if len(held) >= self._batch_size:
                summary.quarantined += self._quarantine.add(held)
                held = []
        self._flush(batch, summary, held)
        if held:
            summary.quarantined += self._quarantine.add(held)
        return summary

    # -- one record (MLLP) --------------------------------------------------------------------

    def ingest_record(self, record: SourceRecord, *, hold: bool = True) -> RecordOutcome:
        """One record, stored before this returns; a record sent again is found unchanged and
        stores nothing. ``hold=False`` (a retry of a held record): what cannot land is
        answered, not quarantined again."""
        return self.ingest_records([record], hold=hold)[0]

    def ingest_records(
        self, records: Sequence[SourceRecord], *, hold: bool = True
    ) -> list[RecordOutcome]:
        """Records that arrived together (the MLLP listener's concurrent messages), stored in
        as few units of work as their keys allow, each answered on its own: ``stored`` (it
        landed, whole or in part) or ``quarantined`` with its reason. All are stored (or held)
        before this returns, so that each may then be acknowledged."""
        summary = IngestSummary()
        held: list[NewQuarantine] = []
        self._track = {}
        landed: list[SourceRecord] = []
        batch: list[_Prepared] = []
        keys: set[SourceKey] = set()
        try:
            for record in records:
                mapped = self._mappings.apply(record, self._context)
                if mapped.blocked or not mapped.resources:
                    held.append(self._held_record(record, _mapping_reason(mapped), mapped))
                    continue
                mine = {r.key for r in mapped.resources}
                if mine & keys:
                    self._flush(batch, summary, held, landed)
                    batch, keys = [], set()
                batch.append(_Prepared(record, mapped))
                keys |= mine
            self._flush(batch, summary, held, landed)
            tracked = self._track
        finally:
            self._track = None
        ids = self._quarantine.add(held) if hold and held else []
        quarantine_ids = {id(entry): qid for entry, qid in zip(held, ids, strict=False)}
        stored = {id(r) for r in landed}
        outcomes: list[RecordOutcome] = []
        for record in records:
            entry = tracked.get(id(record))
            qid = quarantine_ids.get(id(entry), "") if entry is not None else ""
            if id(record) in stored:
                outcomes.append(RecordOutcome("stored", quarantine_id=qid))
            else:
                assert entry is not None
                outcomes.append(RecordOutcome("quarantined", entry.reason, entry.places, qid))
        return outcomes

    def quarantine_problem(self, problem: SourceProblem) -> str:
        """Keep input an adapter could not read (the MLLP listener's unparseable messages)."""
        return self._quarantine.add([self._held_problem(problem)])[0]

    # -- a batch ------------------------------------------------------------------------------

    def _flush(
        self,
        batch: list[_Prepared],
        summary: IngestSummary,
        held: list[NewQuarantine],
        landed_out: list[SourceRecord] | None = None,
    ) -> int:
        if not batch:
            return 0
        keys: set[LedgerKey] = set()
        for prepared in batch:
            system = prepared.record.system
            for mapped_resource, refers_to in zip(
                prepared.mapped.resources, prepared.refers_to, strict=True
            ):
                keys.add(self._ledger_key(system, mapped_resource.key))
                keys.update(self._ledger_key(system, k) for k in refers_to)
        entries = self._ledger.reserve(keys)
        written_here = {
            self._ledger_key(p.record.system, r.key) for p in batch for r in p.mapped.resources
        }
        ready: list[_Ready] = []
        for prepared in batch:
            one = self._ready(prepared, entries, held, written_here)
            if one is not None:
                ready.append(one)
        landed = self._store(ready, summary, held)
        if landed_out is not None:
            landed_out.extend(one.record for one in landed)
        for one in landed:
            for resource_type in one.unchanged:
                summary.resource(resource_type).unchanged += 1
            record = one.record
            summary.counts(record.system, record.record_type).landed += 1
            problems = [p for p in one.mapped.problems if not p.blocking]
            if problems:
                summary.counts(record.system, record.record_type).quarantined += 1
                reason = "landed in part: " + "; ".join(sorted({p.reason for p in problems}))
                held.append(self._held_record(record, reason, one.mapped))
        return sum(len(one.writes) for one in landed)

    def _store(
        self, ready: list[_Ready], summary: IngestSummary, held: list[NewQuarantine]
    ) -> list[_Ready]:
        """Write the batch in one unit of work; the records that landed. When the write path
        refuses the batch (a Consent naming a Patient the partner does not hold, a record of
        another partner's), each record is written alone, so that only the refused one is
        held and the rest lands. Anything but a refusal (the database, the audit) stops the
        run: nothing of the batch is stored without its audit events."""
        writes = [w for r in ready for w in r.writes]
        if not writes:
            return ready
        try:
            stored = self._writers().write_many(
                [w.checked for w in writes] + [self._provenance(ready)]
            )
        except GatewayError as exc:
            if len(ready) > 1:
                return [one for alone in ready for one in self._store([alone], summary, held)]
            (one,) = ready
            reasons = "; ".join(sorted({i.diagnostics for i in exc.issues})) or exc.diagnostics
            places = tuple(
                Place(file=one.record.origin.source, row=_row(one.record), field=e)
                for issue in exc.issues
                for e in issue.expression
            )
            held.append(self._held_record(one.record, f"refused: {reasons}", one.mapped, places))
            return []
        summary.provenance.append(stored[-1].id)
        self._ledger.mark_written((w.entry, w.content, w.sha) for w in writes)
        for resource in stored[:-1]:
            counts = summary.resource(resource.resource_type)
            if resource.version_id == 1:
                counts.created += 1
            else:
                counts.updated += 1
        return ready

    def _ready(
        self,
        prepared: _Prepared,
        entries: dict[LedgerKey, LedgerEntry],
        held: list[NewQuarantine],
        batch_keys: set[LedgerKey],
    ) -> _Ready | None:
        record, mapped = prepared.record, prepared.mapped
        sha = mapped.mapping.sha256 if mapped.mapping is not None else ""
        # No dangling references: what a record points at (its client's Patient) must have
        # landed before, or be written in this batch; else the record waits in quarantine
        # (retried once its client lands) rather than point at nothing.
        missing = sorted(
            {
                key.resource_type
                for refers_to in prepared.refers_to
                for key in refers_to
                if not entries[self._ledger_key(record.system, key)].written
                and self._ledger_key(record.system, key) not in batch_keys
            }
        )
        if missing:
            reason = "refers to a " + " and a ".join(missing) + " of this source that did not land"
            held.append(self._held_record(record, reason, mapped, ()))
            return None

        def resolve(key: SourceKey) -> str | None:
            found = entries.get(self._ledger_key(record.system, key))
            return f"{key.resource_type}/{found.resource_id}" if found is not None else None

        writes: list[_Write] = []
        unchanged: list[str] = []
        for mapped_resource in mapped.resources:
            entry = entries[self._ledger_key(record.system, mapped_resource.key)]
            content = rewrite_placeholders(mapped_resource.resource, resolve)
            if self._ledger.unchanged(entry, content, sha):
                unchanged.append(mapped_resource.key.resource_type)
                continue
            doc = {"resourceType": content["resourceType"], "id": entry.resource_id}
            doc.update((k, v) for k, v in content.items() if k not in ("resourceType", "id"))
            try:
                checked = check(doc, expected_type=mapped_resource.key.resource_type)
            except GatewayError as exc:
                places = tuple(
                    Place(file=record.origin.source, row=_row(record), field=e)
                    for issue in exc.issues
                    for e in issue.expression
                )
                reasons = sorted({i.diagnostics for i in exc.issues})
                reason = f"{mapped_resource.key.resource_type} is not valid R4: " + "; ".join(
                    reasons
                )
                held.append(self._held_record(record, reason, mapped, places))
                return None
            writes.append(_Write(entry, checked, content, sha))
        return _Ready(record, mapped, writes, unchanged)

    def _provenance(self, ready: Sequence[_Ready]) -> Checked:
        """One Provenance for the batch: its records, who sent them (the partner), from where
        (the source's file or message names, never a value of a record) and which mappings."""
        targets = [
            {"reference": f"{w.checked.resource_type}/{w.checked.id}"}
            for r in ready
            for w in r.writes
        ]
        policies = sorted({_policy(r.mapped.mapping) for r in ready if r.mapped.mapping})
        sources = sorted({f"{r.record.system} {r.record.origin.source}".strip() for r in ready})
        if self._source_label:
            sources = [f"{self._source_label}: {s}" for s in sources]
        doc: dict[str, Any] = {
            "resourceType": "Provenance",
            "target": targets,
            "recorded": _instant(self._clock.now()),
            "activity": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                        "code": "UPDATE",
                        "display": "revise",
                    }
                ]
            },
            "agent": [
                {
                    "type": {"coding": [{"system": _PARTICIPANT, "code": "author"}]},
                    "who": {"reference": f"Organization/{self._context.partner_id}"},
                },
                {
                    "type": {"coding": [{"system": _PARTICIPANT, "code": "assembler"}]},
                    "who": {"display": "care-gateway ingest"},
                    "onBehalfOf": {"reference": f"Organization/{self._context.partner_id}"},
                },
            ],
            "entity": [
                {"role": _ENTITY_ROLE_SOURCE, "what": {"display": source[:200]}}
                for source in sources[:20]
            ],
        }
        if policies:
            doc["policy"] = policies
        return check(doc, expected_type="Provenance")

    # -- quarantine ---------------------------------------------------------------------------

    def _held_problem(self, problem: SourceProblem) -> NewQuarantine:
        return NewQuarantine(
            partner_id=self._context.partner_id,
            system=problem.system,
            record_type=problem.record_type,
            source=problem.origin.source,
            locator=problem.origin.locator,
            reason=problem.reason,
            places=problem.places,
            raw=problem.origin.raw,
            fields=None,
        )

    def _held_record(
        self,
        record: SourceRecord,
        reason: str,
        mapped: Mapped,
        places: tuple[Place, ...] | None = None,
    ) -> NewQuarantine:
        if places is None:
            places = tuple(p.place for p in mapped.problems)
        entry = NewQuarantine(
            partner_id=self._context.partner_id,
            system=record.system,
            record_type=record.record_type,
            source=record.origin.source,
            locator=record.origin.locator,
            reason=reason,
            places=places,
            raw=record.origin.raw,
            fields=dict(record.fields),
            source_version=record.version,
            source_id=record.source_id,
        )
        if self._track is not None:
            self._track[id(record)] = entry
        return entry

    def _ledger_key(self, system: str, key: SourceKey) -> LedgerKey:
        """Ids are per partner and source system: the same PersonalID at two partners is two
        people, and placeholders resolve only within one partner's ingest."""
        return LedgerKey(
            self._context.partner_id, system, key.resource_type, key.record_type, key.source_id
        )


_PLACEHOLDER_REFERENCE = re.compile(rb'"reference":"(' + re.escape(PREFIX.encode()) + rb'[^"]*)"')


def _placeholders(node: Any) -> set[SourceKey]:
    """The placeholders a resource holds (``reference`` values only), found in its JSON text:
    a placeholder is percent-encoded (no quote, no backslash), and a ``"reference":"`` inside
    a string value would have its quotes escaped, so only the element itself matches."""
    data = orjson.dumps(node)
    if PREFIX.encode() not in data:
        return set()
    found: set[SourceKey] = set()
    for match in _PLACEHOLDER_REFERENCE.finditer(data):
        parsed = parse_source_reference(match.group(1).decode())
        if parsed is not None:
            found.add(parsed)
    return found


def _mapping_reason(mapped: Mapped) -> str:
    reasons = sorted({p.reason for p in mapped.problems if p.blocking}) or sorted(
        {p.reason for p in mapped.problems}
    )
    if not reasons:
        return "the mapping made no resource of this record"
    return "; ".join(reasons)


def _row(record: SourceRecord) -> int | None:
    locator = record.origin.locator
    if locator.startswith("row "):
        number = locator[4:].split(",", 1)[0].strip()
        if number.isdigit():
            return int(number)
    return None


def _policy(mapping: MappingVersion | None) -> str:
    assert mapping is not None
    return (
        f"urn:care-gateway:mapping:{mapping.system}:{mapping.record_type}:"
        f"{mapping.version}:sha256:{mapping.sha256}"
    )


def _instant(moment: datetime) -> str:
    return stamp(moment)[:23] + "Z"
