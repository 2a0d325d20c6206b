"""Batch and transaction Bundles at ``POST /fhir``.

A *batch* runs each entry on its own; a failed entry answers with its OperationOutcome and the
others go on. A *transaction* is atomic: every entry runs in one store unit of work, in the FHIR
order (DELETE, POST, PUT, GET), ``urn:uuid:`` references are rewritten to the ids the server
assigns, and the first failure rolls everything back and is the answer.

Entries run through the same ``Interactions`` as the REST routes, on the same per-request store,
so a Bundle can never reach data a plain request could not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.consent.store import ConsentedSession, ConsentedStore
from gateway.disclose.interactions import (
    Interactions,
    Prefer,
    Result,
    bundle,
    check_id,
    check_type,
    create_criteria,
    parse_if_match,
    parse_query_string,
)
from gateway.errors import BadRequest, GatewayError, Issue
from gateway.outcomes import error_outcome
from gateway.store.records import fhir_instant, new_id
from gateway.write.admit import Checked

MAX_ENTRIES = 1000
ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass
class Entry:
    index: int
    method: str
    url: str
    path: list[str]
    query: list[tuple[str, str]]
    resource: dict[str, Any] | None
    full_url: str | None
    if_match: int | None
    if_none_exist: str | None
    checked: Checked | None = None  # the resource as the write path took it


def parse_bundle(doc: Any) -> tuple[str, list[Entry]]:
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise BadRequest("POST /fhir takes a Bundle")
    kind = doc.get("type")
    if kind not in ("batch", "transaction"):
        raise BadRequest(
            "Bundle.type must be batch or transaction",
            issues=[
                Issue(
                    "invalid",
                    "Bundle.type must be batch or transaction",
                    expression=("Bundle.type",),
                )
            ],
        )
    raw_entries = doc.get("entry") or []
    if not isinstance(raw_entries, list):
        raise BadRequest("Bundle.entry must be a list")
    if len(raw_entries) > MAX_ENTRIES:
        raise BadRequest(f"a Bundle may carry at most {MAX_ENTRIES} entries")
    return kind, [_parse_entry(i, e) for i, e in enumerate(raw_entries)]


def _parse_entry(index: int, raw: Any) -> Entry:
    where = f"Bundle.entry[{index}]"

    def bad(message: str, element: str) -> BadRequest:
        return BadRequest(
            f"{where}: {message}",
            issues=[Issue("invalid", message, expression=(f"{where}.{element}",))],
        )

    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise bad("entry.request is required", "request")
    request = raw["request"]
    method = request.get("method")
    if method not in ORDER:
        raise bad("request.method must be GET, POST, PUT or DELETE", "request.method")
    url = request.get("url")
    if not isinstance(url, str) or not url:
        raise bad("request.url is required", "request.url")
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    if path and path[0] == "fhir":  # tolerate absolute-path URLs
        path = path[1:]
    if not path:
        raise bad("request.url names no resource", "request.url")
    resource = raw.get("resource")
    if method in ("POST", "PUT"):
        if not isinstance(resource, dict):
            raise bad(f"{method} needs a resource", "resource")
        if resource.get("resourceType") != path[0]:
            raise bad("resource.resourceType does not match request.url", "resource.resourceType")
    else:
        resource = None
    full_url = raw.get("fullUrl")
    return Entry(
        index=index,
        method=method,
        url=url,
        path=path,
        query=parse_query_string(parts.query),
        resource=resource,
        full_url=full_url if isinstance(full_url, str) else None,
        if_match=parse_if_match(request.get("ifMatch")),
        if_none_exist=create_criteria(
            parse_query_string(parts.query) if method == "POST" else [],
            request.get("ifNoneExist") if isinstance(request.get("ifNoneExist"), str) else None,
        ),
    )


class BundleProcessor:
    def __init__(self, interactions: Interactions, *, max_depth: int) -> None:
        self._ix = interactions
        self._max_depth = max_depth

    def process(self, store: ConsentedStore, doc: Any, now: datetime) -> bytes:
        kind, entries = parse_bundle(doc)
        if kind == "batch":
            return self._batch(store, entries, now)
        return self._transaction(store, entries, now)

    # -- batch ------------------------------------------------------------------------------

    def _batch(self, store: ConsentedStore, entries: list[Entry], now: datetime) -> bytes:
        out = []
        for entry in entries:
            try:
                if entry.resource is not None:
                    self._check(entry)
                with store.transaction() as session:
                    result = self._run(session, entry, now)
                out.append(self._response_entry(result))
            except GatewayError as exc:
                out.append(
                    {
                        "response": {
                            "status": str(exc.status),
                            "outcome": orjson.Fragment(error_outcome(exc)),
                        }
                    }
                )
        return bundle("batch-response", now, entries=out)

    # -- transaction ------------------------------------------------------------------------

    def _transaction(self, store: ConsentedStore, entries: list[Entry], now: datetime) -> bytes:
        for entry in entries:
            if entry.resource is not None:
                self._check(entry)
        full_urls = [e.full_url for e in entries if e.full_url]
        if len(full_urls) != len(set(full_urls)):
            raise BadRequest("two transaction entries share a fullUrl")
        results: dict[int, Result] = {}
        with store.transaction() as session:
            # Decide the id of every POST first (a conditional create may match an existing
            # resource), then rewrite references, then run in the FHIR order.
            mapping: dict[str, str] = {}
            pending: dict[int, str] = {}
            for entry in entries:
                if entry.method != "POST" or entry.checked is None:
                    continue
                resource_type = entry.checked.resource_type
                existing = (
                    self._ix.find_existing(session, resource_type, entry.if_none_exist)
                    if entry.if_none_exist
                    else None
                )
                if existing is not None:
                    results[entry.index] = Result(200, existing.body, {}, existing)
                    target = existing.reference
                else:
                    pending[entry.index] = new_id()
                    target = f"{resource_type}/{pending[entry.index]}"
                if entry.full_url:
                    mapping[entry.full_url] = target
            for entry in entries:
                if entry.checked is not None and mapping:
                    entry.checked = entry.checked.rewritten(mapping)
            for entry in sorted(entries, key=_run_order):
                if entry.index in results:
                    continue
                if entry.index in pending:
                    assert entry.checked is not None
                    stored = session.create(
                        entry.checked.without_id(), resource_id=pending[entry.index]
                    )
                    results[entry.index] = Result(201, stored.body, {}, stored)
                else:
                    results[entry.index] = self._run(session, entry, now)
        out = [self._response_entry(results[e.index]) for e in entries]
        return bundle("transaction-response", now, entries=out)

    # -- one entry --------------------------------------------------------------------------

    def _check(self, entry: Entry) -> None:
        """The entry's resource through the write path's check; its issues name the entry."""
        try:
            entry.checked = self._ix.check(entry.resource)
        except GatewayError as exc:
            prefix = f"Bundle.entry[{entry.index}].resource"
            exc.issues = [
                Issue(
                    i.code,
                    f"{prefix}: {i.diagnostics}",
                    i.severity,
                    tuple(f"{prefix}.{e}" for e in i.expression),
                )
                for i in exc.issues
            ]
            raise

    def _run(self, session: ConsentedSession, entry: Entry, now: datetime) -> Result:
        path = entry.path
        resource_type = path[0]
        check_type(resource_type)
        prefer = Prefer()
        handlers: dict[tuple[str, int], Callable[[], Result]] = {
            ("GET", 1): lambda: self._ix.search(
                session, resource_type, entry.query, prefer=prefer, now=now
            ),
            ("GET", 2): lambda: self._ix.read(session, resource_type, path[1]),
            ("GET", 4): lambda: self._vread(session, entry, path),
            ("POST", 1): lambda: self._ix.create(
                session, _checked(entry), prefer=prefer, if_none_exist=entry.if_none_exist
            ),
            ("PUT", 2): lambda: self._ix.update(
                session,
                resource_type,
                path[1],
                _checked(entry),
                prefer=prefer,
                if_match=entry.if_match,
            ),
            ("DELETE", 2): lambda: self._ix.delete(session, resource_type, path[1]),
        }
        method = "GET" if entry.method == "HEAD" else entry.method
        handler = handlers.get((method, len(path)))
        if handler is None:
            raise BadRequest(
                f"Bundle.entry[{entry.index}]: {entry.method} {entry.url} is not supported"
            )
        return handler()

    def _vread(self, session: ConsentedSession, entry: Entry, path: list[str]) -> Result:
        if path[2] != "_history":
            raise BadRequest(f"Bundle.entry[{entry.index}]: unsupported request.url")
        check_id(path[1])
        return self._ix.vread(session, path[0], path[1], path[3])

    def _response_entry(self, result: Result) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        stored = result.stored
        if result.body is not None and (stored is None or not stored.deleted):
            if stored is not None:
                entry["fullUrl"] = f"{self._ix.base}/{stored.reference}"
            entry["resource"] = orjson.Fragment(result.body)
        response: dict[str, Any] = {"status": STATUS_TEXT.get(result.status, str(result.status))}
        if stored is not None:
            if result.status == 201:
                response["location"] = (
                    f"{self._ix.base}/{stored.reference}/_history/{stored.version_id}"
                )
            response["etag"] = f'W/"{stored.version_id}"'
            response["lastModified"] = fhir_instant(stored.last_updated)
        entry["response"] = response
        return entry


def _run_order(entry: Entry) -> tuple[int, bool]:
    """The FHIR order (DELETE, POST, PUT, GET), and within it Consents last: a Consent is
    recorded for a Patient its recorder holds, which may be created earlier in the same
    transaction."""
    is_consent = entry.resource is not None and entry.resource.get("resourceType") == "Consent"
    return ORDER[entry.method], is_consent


def _checked(entry: Entry) -> Checked:
    if entry.checked is None:
        raise BadRequest(f"Bundle.entry[{entry.index}]: the entry needs a resource")
    return entry.checked
