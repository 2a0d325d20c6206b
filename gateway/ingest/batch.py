"""Batch ingest: many resources through the one write path, validated on every core.

Validation (``write.validate``, strict R4) costs CPU per resource on the scale of the store's
write, so ``write.admit.check_batches`` validates the *next* batch in worker processes while the
requester's store writes the current one (labels, contributor, scopes, Consent authority: the
same path a REST write takes). A resource that fails validation is not written and not lost: it
comes back in the report with the issues that name its faulty elements (never its values), for
the caller to quarantine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.store.port import StoredResource
from gateway.write.admit import Checked, Rejected, check_batches


class BatchWriter(Protocol):
    """What a batch is written through: a requester's store (``ConsentedStore``)."""

    def write_many(self, resources: Sequence[Checked]) -> list[StoredResource]: ...


@dataclass
class BatchReport:
    written: int = 0
    rejected: list[Rejected] = field(default_factory=list)


class BatchIngest:
    """``workers`` validator processes (default: one core fewer than the machine has, leaving one
    for the writer); ``workers=0`` validates in-process (tests, small loads)."""

    def __init__(
        self, store: BatchWriter, *, batch_size: int = 500, workers: int | None = None
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if workers is not None and workers < 0:
            raise ValueError("workers must be 0 (in-process) or more")
        self._store = store
        self._batch_size = batch_size
        self._workers = workers

    def run(
        self, resources: Iterable[dict[str, Any]], on_batch: Callable[[int], None] | None = None
    ) -> BatchReport:
        report = BatchReport()
        for checked, rejected, read in check_batches(
            resources, batch_size=self._batch_size, workers=self._workers
        ):
            if checked:
                self._store.write_many(checked)
            report.written += len(checked)
            report.rejected.extend(rejected)
            if on_batch is not None:
                on_batch(read)
        return report
