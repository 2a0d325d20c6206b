"""What one request disclosed and refused (``AuditTrail``), and where its events go
(``AuditLog``: the chain, or the in-memory twin in unit tests).

``ConsentedSession`` adds an ``Activity`` for every interaction it serves or refuses, Bundle
entries included; the REST layer turns the trail into AuditEvents and appends them **before**
it answers. An ``AuditLog`` that cannot append raises ``ServiceUnavailable``: the request then
answers 503 and discloses nothing (fail closed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from gateway.audit.chain import AuditPage, AuditQuery, index_values
from gateway.audit.events import Activity, aggregated_refusals
from gateway.errors import ServiceUnavailable
from gateway.vocabulary.dates import parse_date_range, stamp

if TYPE_CHECKING:
    from gateway.store.port import StoreSession


def _stamp(instant: str) -> str:
    return parse_date_range(instant)[0] if instant else ""


class AuditLog(Protocol):
    def append(self, events: Sequence[dict[str, Any]]) -> list[int]:
        """Commit the events; their sequence numbers. Raise ServiceUnavailable if not."""
        ...

    def search(self, query: AuditQuery) -> AuditPage:
        """Events matching the query, newest first (compliance review)."""
        ...

    def append_within(
        self, session: StoreSession, events: Sequence[dict[str, Any]]
    ) -> Callable[[], None] | None:
        """Append the events inside ``session``'s open transaction, so that they commit with
        it or not at all; what to run once it has committed (or None)."""
        ...

    def close(self) -> None:
        """Release connections (the app's shutdown)."""
        ...

    def note_unauthenticated(self, source: str | None, reason: str) -> None:
        """Count a refusal without a valid token (committed, or ``ServiceUnavailable``); such
        refusals reach the log as one event per source, reason and minute."""
        ...


class AuditTrail:
    """The activities of one request, in order. The first ``committed`` are already in the
    log: written in the transaction of the write they record (``AuditLog.append_within``)."""

    __slots__ = ("activities", "committed")

    def __init__(self) -> None:
        self.activities: list[Activity] = []
        self.committed = 0

    def pending(self) -> list[Activity]:
        """What is not in the log yet (written after the interaction, before the response)."""
        return self.activities[self.committed :]

    def add(self, activity: Activity) -> None:
        self.activities.append(activity)


class MemoryAuditLog:
    """The in-memory twin, for unit tests: keeps events in a list; ``failing`` makes every
    append fail, as a full disk or a lost database would."""

    def __init__(self, *, failing: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.failing = failing

    def append(self, events: Sequence[dict[str, Any]]) -> list[int]:
        if self.failing:
            raise ServiceUnavailable("the audit log cannot be written")
        first = len(self.events) + 1
        self.events.extend(events)
        return list(range(first, first + len(events)))

    def close(self) -> None:
        return None

    def note_unauthenticated(self, source: str | None, reason: str) -> None:
        # The twin keeps no counters: each refusal is an aggregate of one.
        self.append(
            [
                aggregated_refusals(
                    source_address=source or "unknown", reason=reason,
                    minute=stamp(datetime.now(UTC))[:16], count=1,
                    recorded=datetime.now(UTC), site="care-gateway",
                )
            ]
        )  # fmt: skip

    def append_within(
        self, session: StoreSession, events: Sequence[dict[str, Any]]
    ) -> Callable[[], None] | None:
        self.append(events)  # the in-memory twin has no transaction to join
        return None

    def search(self, query: AuditQuery) -> AuditPage:
        if self.failing:
            raise ServiceUnavailable("the audit log cannot be read")
        hits = [
            (seq, event)
            for seq, event in reversed(list(enumerate(self.events, start=1)))
            if _matches(query, event)
        ]
        after = [(seq, e) for seq, e in hits if query.before_seq is None or seq < query.before_seq]
        page = after[: query.count]
        more = len(after) > query.count
        return AuditPage(page, len(hits), page[-1][0] if more and page else None)


def _matches(query: AuditQuery, event: dict[str, Any]) -> bool:
    values = set(index_values(event))
    if not all(any((p, v) in values for v in vs) for p, vs in query.criteria):
        return False
    recorded = _stamp(event.get("recorded", ""))
    if query.recorded_from is not None and recorded < query.recorded_from:
        return False
    return query.recorded_to is None or recorded <= query.recorded_to
