"""Batch ingest: many resources into the store, validated on every core.

Validation (``ingest.validate``, strict R4) costs CPU per resource on the scale of the store's
write, so the batch path validates the *next* batch in worker processes while the store writes
the current one. A
resource that fails validation is not written and not lost: it comes back in the report with the
issues that name its faulty elements (never its values), for the caller to quarantine.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from gateway.errors import GatewayError, Issue
from gateway.ingest.validate import validate_resource
from gateway.store.port import StoreSession
from gateway.store.searchparams import RESOURCE_TYPES

Verdict = tuple[int, list[Issue] | None]  # (position, None when valid)


@dataclass(frozen=True, slots=True)
class Rejected:
    position: int  # index of the resource in the input
    issues: list[Issue]


@dataclass
class BatchReport:
    written: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def validate_positions(items: Sequence[tuple[int, Any]]) -> list[Verdict]:
    """Worker side: judge each (position, resource); only verdicts travel back."""
    verdicts: list[Verdict] = []
    for position, resource in items:
        try:
            validate_resource(resource, allowed_types=RESOURCE_TYPES)
        except GatewayError as exc:
            verdicts.append((position, exc.issues))
        else:
            verdicts.append((position, None))
    return verdicts


class BatchIngest:
    """``workers`` validator processes (default: one core fewer than the machine has, leaving one
    for the writer); ``workers=0`` validates in-process (tests, small loads)."""

    def __init__(
        self, store: StoreSession, *, batch_size: int = 500, workers: int | None = None
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self._store = store
        self._batch_size = batch_size
        if workers is None:
            workers = max(1, (os.cpu_count() or 1) - 1)
        if workers < 0:
            raise ValueError("workers must be 0 (in-process) or more")
        self._workers = workers

    def run(
        self, resources: Iterable[dict[str, Any]], on_batch: Callable[[int], None] | None = None
    ) -> BatchReport:
        report = BatchReport()
        batches = _batches(enumerate(resources), self._batch_size)
        if self._workers == 0:
            for batch in batches:
                self._write(batch, validate_positions(batch), report, on_batch)
            return report
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["gateway.ingest.batch"])
        with ProcessPoolExecutor(self._workers, mp_context=context) as pool:
            first = next(batches, None)
            if first is None:
                return report
            # While the workers start (a second or so: fork server, imports, cold models), the
            # first batch is validated here; from then on the workers validate one batch ahead.
            for _ in range(self._workers):
                pool.submit(validate_positions, [])
            pending = (first, [_done(validate_positions(first))])
            for batch in batches:
                submitted = (batch, self._submit(pool, batch))
                self._write(pending[0], _gather(pending[1]), report, on_batch)
                pending = submitted
            self._write(pending[0], _gather(pending[1]), report, on_batch)
        return report

    def _submit(
        self, pool: ProcessPoolExecutor, batch: list[tuple[int, Any]]
    ) -> list[Future[list[Verdict]]]:
        share = -(-len(batch) // self._workers)
        return [
            pool.submit(validate_positions, batch[i : i + share])
            for i in range(0, len(batch), share)
        ]

    def _write(
        self,
        batch: list[tuple[int, Any]],
        verdicts: list[Verdict],
        report: BatchReport,
        on_batch: Callable[[int], None] | None,
    ) -> None:
        problems = {position: issues for position, issues in verdicts if issues is not None}
        valid = [resource for position, resource in batch if position not in problems]
        if valid:
            self._store.write_many(valid)
        report.written += len(valid)
        report.rejected.extend(Rejected(p, issues) for p, issues in sorted(problems.items()))
        if on_batch is not None:
            on_batch(len(batch))


def _batches(items: Iterable[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _done(verdicts: list[Verdict]) -> Future[list[Verdict]]:
    future: Future[list[Verdict]] = Future()
    future.set_result(verdicts)
    return future


def _gather(futures: list[Future[list[Verdict]]]) -> list[Verdict]:
    return [verdict for future in futures for verdict in future.result()]
