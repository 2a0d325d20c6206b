"""What one request disclosed and refused (``AuditTrail``), and where its events go
(``AuditLog``: the chain, or the in-memory twin in unit tests).

``ConsentedSession`` adds an ``Activity`` for every interaction it serves or refuses, Bundle
entries included; the REST layer turns the trail into AuditEvents and appends them **before**
it answers. An ``AuditLog`` that cannot append raises ``ServiceUnavailable``: the request then
answers 503 and discloses nothing (fail closed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from gateway.audit.events import Activity
from gateway.errors import ServiceUnavailable


class AuditLog(Protocol):
    def append(self, events: Sequence[dict[str, Any]]) -> list[int]:
        """Commit the events; their sequence numbers. Raise ServiceUnavailable if not."""
        ...


class AuditTrail:
    """The activities of one request, in order."""

    __slots__ = ("activities",)

    def __init__(self) -> None:
        self.activities: list[Activity] = []

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
