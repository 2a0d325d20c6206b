"""Injectable clock, so that versions, consent periods and token expiry are testable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock for tests: stands still until told to move, or moves ``step`` on every reading."""

    def __init__(self, start: datetime, step: timedelta = timedelta(0)) -> None:
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs an aware datetime")
        self._now = start
        self._step = step

    def now(self) -> datetime:
        reading = self._now
        self._now += self._step
        return reading

    def advance(self, delta: timedelta) -> None:
        self._now += delta
