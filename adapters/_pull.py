"""What an incremental pull (LegalServer, FHIR) yields: its items in source order and the
high-water mark to store for the next pull."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.vocabulary.source import SourceItem, SourceNotice, SourceProblem, SourceRecord

Mark = TypeVar("Mark")


# Not slots=True: a slotted frozen Generic dataclass breaks its own __init__ (CPython 3.11).
@dataclass(frozen=True)
class Pull(Generic[Mark]):
    """The items of one pull, in source order, and the mark to store. The mark moves only
    when every page was read: after a failed page it is the mark the pull began with, so the
    next pull reads that window again."""

    items: tuple[SourceItem, ...]
    high_water_mark: Mark

    @property
    def records(self) -> list[SourceRecord]:
        return [i for i in self.items if isinstance(i, SourceRecord)]

    @property
    def problems(self) -> list[SourceProblem]:
        return [i for i in self.items if isinstance(i, SourceProblem)]

    @property
    def notices(self) -> list[SourceNotice]:
        return [i for i in self.items if isinstance(i, SourceNotice)]
