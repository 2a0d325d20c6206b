"""HL7 v2 messages into the pipeline, one at a time, each answered with the outcome its ACK
says (``adapters.hl7v2.ack_for``): the MLLP listener's handler and ``gateway ingest hl7v2``.

For each message:

1. the sender: MSH-4 (its first component) must be the ``hl7_sending_facility`` of a partner
   in the partners file, and (over MLLP) the connection must come from one of that partner's
   ``hl7_peers``: MSH-4 is written by the sender, so it alone proves nothing. Otherwise AR
   (204, unknown key identifier) naming MSH-4, the same answer for an unknown facility and for
   a known one from the wrong address, and nothing is kept (the gateway cannot say whose it
   would be);
2. the message is read (``adapters.hl7v2.parse_message``): what cannot be read is AR, what is
   read but wrong (a bad date, a missing required field, a segment out of order) is AE, each
   with the segment and field; either is also quarantined with its bytes, so nothing is lost;
3. the record goes through that partner's pipeline: AA only once it is stored (or found stored
   unchanged: a message sent again stores nothing twice and is acknowledged again); AE when the
   mapping or the strict R4 check refused it (quarantined, naming the place); AR (207) when the
   gateway itself failed (nothing stored: the sender should send it again).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from adapters.hl7v2 import (
    DEFAULT_LIMITS,
    Accepted,
    ErrorCode,
    Limits,
    NotMappable,
    Outcome,
    Rejected,
    header_of,
    outcome_for,
    parse_message,
)
from gateway.ingest.pipeline import IngestPipeline, RecordOutcome
from gateway.partners import Partner, PartnerDirectory
from gateway.vocabulary.source import Place, SourceRecord

_log = logging.getLogger(__name__)

UNKNOWN_FACILITY = "the sending facility (MSH-4) is not a partner of this gateway"
_MSH4 = Place(segment="MSH", field="MSH-4")


@dataclass
class _Slot:
    record: SourceRecord
    done: bool = False
    outcome: RecordOutcome | None = None
    error: BaseException | None = None


# Messages handled at once (each waits in its own thread for its group to be stored): enough
# for the listener's connections to fill a group, where asyncio's default pool (cores + 4) would
# cap it.
THREADS = 64


class _GroupCommit:
    """One partner's writer. Messages that arrive together are stored together: a message's
    thread queues its record, then waits its turn to write; whoever writes takes every record
    queued by then (its own included) through the pipeline as one group, and each thread
    answers for its own record once the group is stored. Under load a handful of messages
    share one unit of work; alone, a message is a group of one. Nothing is acknowledged before
    it is stored."""

    def __init__(self, pipeline: IngestPipeline) -> None:
        self.pipeline = pipeline
        self.writer = threading.Lock()  # one group at a time (the partner's ledger, batch)
        self._queue_lock = threading.Lock()
        self._queue: list[_Slot] = []

    def store(self, record: SourceRecord) -> RecordOutcome:
        slot = _Slot(record)
        with self._queue_lock:
            self._queue.append(slot)
        with self.writer:
            if not slot.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                try:
                    outcomes = self.pipeline.ingest_records([s.record for s in group])
                except BaseException as exc:
                    for each in group:
                        each.error, each.done = exc, True
                else:
                    for each, outcome in zip(group, outcomes, strict=True):
                        each.outcome, each.done = outcome, True
        if slot.error is not None:
            raise slot.error
        assert slot.outcome is not None
        return slot.outcome


class Hl7Ingest:
    """``pipeline_for(partner)`` gives the pipeline of a partner (made once per partner and
    kept). One partner's messages are written by one writer at a time, in groups of those that
    arrived together (``_GroupCommit``); different partners proceed side by side (PostgreSQL;
    SQLite serialises writes itself)."""

    def __init__(
        self,
        directory: PartnerDirectory,
        pipeline_for: Callable[[Partner], IngestPipeline],
        *,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._directory = directory
        self._pipeline_for = pipeline_for
        self._limits = limits
        self._pipelines: dict[str, _GroupCommit] = {}
        self._guard = threading.Lock()
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="hl7-ingest")

    def _pipeline(self, partner: Partner) -> _GroupCommit:
        with self._guard:
            found = self._pipelines.get(partner.id)
            if found is None:
                found = _GroupCommit(self._pipeline_for(partner))
                self._pipelines[partner.id] = found
            return found

    def sender(self, message: bytes, peer: str | None) -> Partner | None:
        """The partner a message is from: named by MSH-4 and, when it came over the network
        (``peer``: the connection's address), sent from that partner's own addresses."""
        header = header_of(message)
        facility = header.component(4) if header is not None else ""
        partner = self._directory.by_hl7_facility(facility) if facility else None
        if partner is None or (peer is not None and not partner.sends_hl7_from(peer)):
            return None
        return partner

    def handle(
        self,
        message: bytes,
        *,
        peer: str | None,
        source: str = "mllp",
        locator: str | None = None,
    ) -> Outcome:
        """The outcome for one message (blocking: the store is written before it returns).
        ``peer``: the address it came from (``None``: an operator's file for one partner)."""
        partner = self.sender(message, peer)
        if partner is None:
            return Rejected(ErrorCode.UNKNOWN_KEY_IDENTIFIER, UNKNOWN_FACILITY, _MSH4)
        group = self._pipeline(partner)
        pipeline = group.pipeline
        parsed = parse_message(message, source=source, locator=locator, limits=self._limits)
        if not isinstance(parsed, SourceRecord):
            with group.writer:
                pipeline.quarantine_problem(parsed)
            outcome = outcome_for(parsed)
            assert outcome is not None
            return outcome
        outcome_of_record = group.store(parsed)
        if outcome_of_record.status == "stored":
            return Accepted()
        if parsed.record_type not in pipeline.record_types(parsed.system):
            return Rejected(
                ErrorCode.UNSUPPORTED_MESSAGE_TYPE, "this gateway maps no message of this type"
            )
        # The first place that names a segment (ERR-2), else none.
        place = next((p for p in outcome_of_record.places if p.segment), None)
        return NotMappable(place, ErrorCode.DATA_TYPE_ERROR, _sender_text(outcome_of_record.reason))

    async def __call__(self, message: bytes, peer: Any) -> Outcome:
        """The MLLP listener's handler: the blocking work in a thread, so one slow store write
        does not stall the other connections."""
        host = getattr(peer, "host", "") or ""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._threads,
                functools.partial(self.handle, message, peer=host, source=f"mllp {host}".strip()),
            )
        except Exception as exc:  # any failure: nothing stored, the sender sends it again
            _log.error("hl7 ingest failed: %s", type(exc).__name__)
            return Rejected(ErrorCode.APPLICATION_INTERNAL_ERROR, "the gateway could not store it")


def _sender_text(reason: str) -> str:
    """What the sender reads in ERR: the reason (which names places and elements, never
    values), cut to what ERR-8 holds."""
    return reason[:200] or "the message could not be stored"
