"""The gate of the one write path: what the store accepts, and the only way to make it.

Every write the gateway makes (a REST create or update, a Bundle entry, an ingested record, the
gateway's own directory entries) passes through two steps here:

1. ``check``: strict R4 validation (``write.validate``: JSON types without coercion, required
   bindings, references, dates) of a type the registry stores, with references to this
   gateway's own base made relative. The result is a ``Checked`` resource.
2. ``admit``: the security labels the code tables call for (``consent.labels``, keeping the
   writer's own) and the contributor the store records. The result is a ``ValidResource``.

The store's write methods take only a ``ValidResource`` (``store.port``), and only this module
can make one or a ``Checked`` (their constructors refuse any other caller), so an unvalidated,
unlabelled or unattributed write cannot be expressed. Who may write what (scopes, "only the
contributor changes a record", Consent authority) is decided between the two steps by the
requester's store (``consent.store``); identity (stable ids for source records) and Provenance
by the ingest pipeline (``ingest``).

For batches, ``check_batches`` validates in worker processes, one batch ahead of the writer;
the verdicts come back and the resources are sealed here, in the parent.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, final

from gateway.consent.labels import LabelTables, labels_for
from gateway.errors import GatewayError, Issue
from gateway.vocabulary.references import ID_PATTERN, localise, parse_local
from gateway.vocabulary.registry import RESOURCE_TYPES
from gateway.write.validate import validate_resource

_SEAL = object()  # never leaves this module


class _Resource:
    """What both sealed forms say of the resource they hold."""

    __slots__ = ()
    doc: dict[str, Any]

    @property
    def resource_type(self) -> str:
        resource_type: str = self.doc["resourceType"]
        return resource_type

    @property
    def id(self) -> str | None:
        value = self.doc.get("id")
        return value if isinstance(value, str) else None


@final
class Checked(_Resource):
    """A resource that is valid R4 of a type the gateway stores, its references to this
    gateway's base made relative: what a requester's store is handed to write."""

    __slots__ = ("doc",)
    doc: dict[str, Any]

    def __init__(self, doc: dict[str, Any], seal: object = None) -> None:
        if seal is not _SEAL:
            raise TypeError("a Checked resource comes only from gateway.write.admit.check")
        self.doc = doc

    def without_id(self) -> Checked:
        """The same resource without its id (a create: the server assigns ids)."""
        return Checked({k: v for k, v in self.doc.items() if k != "id"}, _SEAL)

    def with_id(self, resource_id: str) -> Checked:
        """The same resource under a server-chosen id (a FHIR id: ingest's stable ids)."""
        _check_id(resource_id)
        return Checked({**self.doc, "id": resource_id}, _SEAL)

    def rewritten(self, mapping: Mapping[str, str]) -> Checked:
        """References that name a transaction entry's ``fullUrl`` (``urn:uuid:…``) replaced by
        the ``Type/id`` it was given; both forms are valid references, so it stays checked."""
        for target in mapping.values():
            _check_local(target)
        return Checked(_rewrite(self.doc, mapping), _SEAL)


@final
class ValidResource(_Resource):
    """A checked resource with its write-time security labels and its contributor (the partner
    that wrote it; None for the gateway's own records): the only thing the store writes."""

    __slots__ = ("contributor", "doc")
    doc: dict[str, Any]
    contributor: str | None

    def __init__(self, doc: dict[str, Any], contributor: str | None, seal: object = None) -> None:
        if seal is not _SEAL:
            raise TypeError("a ValidResource comes only from gateway.write.admit.admit")
        self.doc = doc
        self.contributor = contributor


def require_valid(resource: object) -> ValidResource:
    """What every store write asserts first: the resource came through ``admit`` (the type
    checker says so already; this holds for callers it does not see)."""
    if not isinstance(resource, ValidResource):
        raise TypeError("the store writes only a ValidResource (gateway.write.admit)")
    return resource


def check(doc: Any, *, base: str | None = None, expected_type: str | None = None) -> Checked:
    """``doc`` as a ``Checked`` resource, or the GatewayError (400/422) naming what is wrong
    (elements, never values). ``base``: this gateway's FHIR base, whose absolute references
    are made relative (after the write, every absolute reference names another server)."""
    resource = validate_resource(doc, allowed_types=RESOURCE_TYPES, expected_type=expected_type)
    if base:
        resource = localise(resource, base)
    return Checked(resource, _SEAL)


def admit(
    checked: Checked,
    *,
    contributor: str | None,
    contributor_kind: str | None = None,
    labels: LabelTables | None = None,
) -> ValidResource:
    """The checked resource labelled for its contributor: ``labels_for`` adds the sensitivity
    labels the code tables call for and the confidentiality of the contributor's kind, keeping
    the writer's own ``meta.security``. Without label tables (unit tests of the store, the
    gateway's own directory entries) the resource keeps the labels it carries."""
    doc = checked.doc
    if labels is not None:
        security = labels_for(doc, contributor_kind=contributor_kind, tables=labels)
        if security:
            doc = {**doc, "meta": {**(doc.get("meta") or {}), "security": security}}
    return ValidResource(doc, contributor, _SEAL)


# -- batches: validation in worker processes -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    """A resource of a batch that is not valid R4: its position in the input, and the issues
    that name its faulty elements (never its values)."""

    position: int
    issues: list[Issue]


Verdict = tuple[int, list[Issue] | None]  # (position, None when valid)


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


def check_batches(
    resources: Iterable[dict[str, Any]],
    *,
    batch_size: int = 500,
    workers: int | None = None,
    base: str | None = None,
) -> Iterator[tuple[list[Checked], list[Rejected], int]]:
    """The input in batches of ``batch_size``: per batch, the checked resources (input order),
    the rejected ones and how many were read. ``workers`` validator processes (default: one
    core fewer than the machine has, leaving one for the writer) judge the next batch while
    the caller writes this one; ``workers=0`` validates in-process."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if workers is None:
        workers = max(1, (os.cpu_count() or 1) - 1)
    if workers < 0:
        raise ValueError("workers must be 0 (in-process) or more")
    batches = _batches(enumerate(resources), batch_size)
    if workers == 0:
        for batch in batches:
            yield _sealed(batch, validate_positions(batch), base)
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["gateway.write.admit"])
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        first = next(batches, None)
        if first is None:
            return
        # While the workers start (a second or so: fork server, imports, cold models), the
        # first batch is validated here; from then on the workers validate one batch ahead.
        for _ in range(workers):
            pool.submit(validate_positions, [])
        pending = (first, [_done(validate_positions(first))])
        for batch in batches:
            submitted = (batch, _submit(pool, batch, workers))
            yield _sealed(pending[0], _gather(pending[1]), base)
            pending = submitted
        yield _sealed(pending[0], _gather(pending[1]), base)


def _sealed(
    batch: list[tuple[int, Any]], verdicts: list[Verdict], base: str | None
) -> tuple[list[Checked], list[Rejected], int]:
    problems = {position: issues for position, issues in verdicts if issues is not None}
    if len(verdicts) != len(batch):
        raise RuntimeError("a validator returned a verdict for another batch")
    checked = [
        Checked(localise(resource, base) if base else resource, _SEAL)
        for position, resource in batch
        if position not in problems
    ]
    rejected = [Rejected(p, issues) for p, issues in sorted(problems.items())]
    return checked, rejected, len(batch)


def _submit(
    pool: ProcessPoolExecutor, batch: list[tuple[int, Any]], workers: int
) -> list[Future[list[Verdict]]]:
    share = -(-len(batch) // workers)
    return [
        pool.submit(validate_positions, batch[i : i + share]) for i in range(0, len(batch), share)
    ]


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


# -- helpers ---------------------------------------------------------------------------------


def _check_id(resource_id: str) -> None:
    if not ID_PATTERN.fullmatch(resource_id):
        raise ValueError("not a FHIR id")


def _check_local(reference: str) -> None:
    if parse_local(reference) is None:
        raise ValueError("a transaction entry's reference must become a local Type/id")


def _rewrite(node: Any, mapping: Mapping[str, str]) -> Any:
    """Replace every ``reference`` that names a transaction fullUrl (``urn:uuid:…``)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in mapping:
                out[key] = mapping[value]
            else:
                out[key] = _rewrite(value, mapping)
        return out
    if isinstance(node, list):
        return [_rewrite(v, mapping) for v in node]
    return node
