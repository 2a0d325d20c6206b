"""FHIR interactions (read, vread, create, update, delete, history, search), independent of the
web framework, so that the REST routes and the entries of a batch or transaction Bundle run the
very same code on whatever store session they are handed.

Hot paths hand back stored bytes; Bundles are assembled around them with ``orjson.Fragment``,
never re-parsed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from gateway.consent.store import ConsentedSession
from gateway.errors import BadRequest, Gone, Issue, NotFound, PreconditionFailed, not_found
from gateway.outcomes import information
from gateway.store.port import SearchQuery, StoredResource
from gateway.store.query import parse_search
from gateway.store.records import fhir_instant
from gateway.vocabulary.registry import RESOURCE_TYPES
from gateway.write.admit import Checked, check

ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")
MAX_QUERY_FIELDS = 100


@dataclass
class Result:
    """What an interaction answers: the status, the body bytes and the headers."""

    status: int
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stored: StoredResource | None = None


@dataclass(frozen=True, slots=True)
class Prefer:
    return_: str = "representation"  # minimal | representation | OperationOutcome
    lenient: bool = False

    @classmethod
    def parse(cls, header: str | None) -> Prefer:
        return_, lenient = "representation", False
        for part in (header or "").split(","):
            name, _, value = part.strip().partition("=")
            value = value.strip().strip('"')
            if name == "return" and value in ("minimal", "representation", "OperationOutcome"):
                return_ = value
            elif name == "handling" and value == "lenient":
                lenient = True
        return cls(return_, lenient)


def check_type(resource_type: str) -> None:
    if resource_type not in RESOURCE_TYPES:
        raise NotFound(
            "resource type is not supported",
            issues=[Issue("not-supported", "resource type is not supported by this server")],
        )


def check_id(resource_id: str) -> None:
    if not ID_PATTERN.fullmatch(resource_id):
        raise BadRequest("the resource id is not a valid FHIR id")


def parse_if_match(header: str | None) -> int | None:
    if header is None:
        return None
    tag = header.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    if not tag.isdigit():
        raise BadRequest('If-Match must be a version ETag such as W/"3"')
    return int(tag)


def etag(stored: StoredResource) -> str:
    return f'W/"{stored.version_id}"'


def http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


class Interactions:
    """Bound to the public base URL and paging limits; stateless otherwise."""

    def __init__(self, fhir_base: str, *, default_count: int, max_count: int) -> None:
        self.base = fhir_base
        self.default_count = default_count
        self.max_count = max_count

    # -- single resources -------------------------------------------------------------------

    def _resource_result(self, stored: StoredResource, status: int = 200) -> Result:
        return Result(
            status,
            stored.body,
            {"ETag": etag(stored), "Last-Modified": http_date(stored.last_updated)},
            stored,
        )

    def read(self, session: ConsentedSession, resource_type: str, resource_id: str) -> Result:
        check_type(resource_type)
        check_id(resource_id)
        return self._resource_result(session.read(resource_type, resource_id))

    def vread(
        self, session: ConsentedSession, resource_type: str, resource_id: str, version: str
    ) -> Result:
        check_type(resource_type)
        check_id(resource_id)
        if not (version.isascii() and version.isdigit()) or len(version) > 9:
            raise not_found(resource_type, resource_id)
        return self._resource_result(session.vread(resource_type, resource_id, int(version)))

    def _write_result(self, stored: StoredResource, status: int, prefer: Prefer) -> Result:
        headers = {
            "ETag": etag(stored),
            "Last-Modified": http_date(stored.last_updated),
            "Location": f"{self.base}/{stored.reference}/_history/{stored.version_id}",
        }
        if prefer.return_ == "minimal":
            return Result(status, None, headers, stored)
        if prefer.return_ == "OperationOutcome":
            message = "created" if status == 201 else "updated"
            return Result(status, orjson.dumps(information(message)), headers, stored)
        return Result(status, stored.body, headers, stored)

    def create(
        self,
        session: ConsentedSession,
        resource: Checked,
        *,
        prefer: Prefer,
        if_none_exist: str | None = None,
    ) -> Result:
        if if_none_exist:
            existing = self.find_existing(session, resource.resource_type, if_none_exist)
            if existing is not None:
                return self._write_result(existing, 200, prefer)
        # The server assigns ids.
        return self._write_result(session.create(resource.without_id()), 201, prefer)

    def check(self, doc: Any, expected_type: str | None = None) -> Checked:
        """A request body as the write path takes it: valid R4 (or the 400/422 naming what is
        not), references to this gateway's own base made relative, so that every absolute
        reference left names another server."""
        return check(doc, base=self.base, expected_type=expected_type)

    def find_existing(
        self, session: ConsentedSession, resource_type: str, criteria: str
    ) -> StoredResource | None:
        """Conditional create: 0 matches → None, 1 → that resource, more → 412."""
        query = self.parse_query(resource_type, parse_query_string(criteria.lstrip("?")), False)
        if not query.clauses:
            # Criteria that select everything would make "create if absent" mean "never create".
            raise BadRequest("If-None-Exist needs at least one search criterion")
        session.serialize(f"conditional-create:{resource_type}?{criteria}")
        page = session.search(SearchQuery(resource_type, query.clauses, count=2, held_only=True))
        if not page.matches:
            return None
        if len(page.matches) > 1:
            raise PreconditionFailed("If-None-Exist matches more than one resource")
        return page.matches[0]

    def update(
        self,
        session: ConsentedSession,
        resource_type: str,
        resource_id: str,
        resource: Checked,
        *,
        prefer: Prefer,
        if_match: int | None,
    ) -> Result:
        check_type(resource_type)
        check_id(resource_id)
        if resource.id != resource_id:
            raise BadRequest(
                "the resource id must match the id in the URL",
                issues=[Issue("invalid", "id does not match the URL", expression=("id",))],
            )
        stored, created = session.update(resource_type, resource_id, resource, if_match=if_match)
        return self._write_result(stored, 201 if created else 200, prefer)

    def delete(self, session: ConsentedSession, resource_type: str, resource_id: str) -> Result:
        check_type(resource_type)
        check_id(resource_id)
        marker = session.delete(resource_type, resource_id)
        if marker is None:
            # Nothing live to delete: absent is a 404; deleting twice is idempotent (204).
            try:
                session.read(resource_type, resource_id)
            except Gone:
                return Result(204)
        assert marker is not None
        return Result(204, None, {"ETag": etag(marker)}, marker)

    # -- history and search -----------------------------------------------------------------

    def history(
        self,
        session: ConsentedSession,
        resource_type: str,
        resource_id: str,
        params: Sequence[tuple[str, str]],
        now: datetime,
    ) -> Result:
        check_type(resource_type)
        check_id(resource_id)
        count, since, before = self.default_count, None, None
        for name, value in params:
            if name == "_count":
                if not (value.isascii() and value.isdigit()) or len(value) > 9:
                    raise BadRequest("_count must be a non-negative integer")
                count = max(1, min(int(value), self.max_count))
            elif name == "_since":
                try:
                    since = datetime.fromisoformat(value.replace("Z", "+00:00"))
                    if since.tzinfo is None:
                        raise BadRequest("_since must carry a time zone")
                    since.astimezone(UTC)  # a moment a timestamp can hold
                except (ValueError, OverflowError) as exc:
                    raise BadRequest("_since must be a FHIR instant") from exc
            elif name == "_page":
                if not (value.isascii() and value.isdigit()) or len(value) > 9:
                    raise BadRequest("_page is not a valid paging token")
                before = int(value)
            elif name not in ("_format", "_pretty"):
                raise BadRequest(f"parameter {name!r} is not supported on history")
        page = session.history(
            resource_type, resource_id, count=count, since=since, before_version=before
        )
        entries = [self._history_entry(v) for v in page.versions]
        self_url = f"{self.base}/{resource_type}/{resource_id}/_history"
        links = [{"relation": "self", "url": _with_query(self_url, params)}]
        if page.next_before is not None:
            kept = [(n, v) for n, v in params if n != "_page"]
            links.append(
                {
                    "relation": "next",
                    "url": _with_query(self_url, [*kept, ("_page", str(page.next_before))]),
                }
            )
        return Result(200, bundle("history", now, entries=entries, links=links))

    def _history_entry(self, v: StoredResource) -> dict[str, Any]:
        method = "DELETE" if v.deleted else ("POST" if v.version_id == 1 else "PUT")
        entry: dict[str, Any] = {"fullUrl": f"{self.base}/{v.reference}"}
        if not v.deleted:
            entry["resource"] = orjson.Fragment(v.body)
        entry["request"] = {
            "method": method,
            "url": v.resource_type if method == "POST" else v.reference,
        }
        entry["response"] = {
            "status": "204" if v.deleted else ("201" if method == "POST" else "200"),
            "etag": etag(v),
            "lastModified": fhir_instant(v.last_updated),
        }
        return entry

    def parse_query(
        self, resource_type: str, params: Iterable[tuple[str, str]], lenient: bool
    ) -> SearchQuery:
        return parse_search(
            resource_type,
            params,
            default_count=self.default_count,
            max_count=self.max_count,
            lenient=lenient,
        )

    def search(
        self,
        session: ConsentedSession,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        prefer: Prefer,
        now: datetime,
    ) -> Result:
        check_type(resource_type)
        query = self.parse_query(resource_type, params, prefer.lenient)
        page = session.search(query)
        type_url = f"{self.base}/{resource_type}"
        links = [{"relation": "self", "url": _with_query(type_url, params)}]
        for relation, cursor in (("next", page.next_cursor), ("previous", page.prev_cursor)):
            if cursor is not None:
                links.append(
                    {
                        "relation": relation,
                        "url": _with_query(type_url, [*query.echo, ("_cursor", cursor)]),
                    }
                )
        entries = [self.search_entry(r, "match") for r in page.matches]
        entries += [self.search_entry(r, "include") for r in page.included]
        return Result(200, bundle("searchset", now, entries=entries, links=links, total=page.total))

    def search_entry(self, r: StoredResource, mode: str) -> dict[str, Any]:
        return {
            "fullUrl": f"{self.base}/{r.reference}",
            "resource": orjson.Fragment(r.body),
            "search": {"mode": mode},
        }


def bundle(
    bundle_type: str,
    now: datetime,
    *,
    entries: list[dict[str, Any]],
    links: list[dict[str, str]] | None = None,
    total: int | None = None,
) -> bytes:
    doc: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": fhir_instant(now)},
        "type": bundle_type,
    }
    if total is not None:
        doc["total"] = total
    if links:
        doc["link"] = links
    if entries:
        doc["entry"] = entries
    return orjson.dumps(doc)


def _with_query(url: str, params: Iterable[tuple[str, str]]) -> str:
    query = urlencode(list(params))
    return f"{url}?{query}" if query else url


NOT_CRITERIA = frozenset({"_format", "_pretty"})


def create_criteria(query: Sequence[tuple[str, str]], if_none_exist: str | None) -> str | None:
    """A create's conditional criteria: ``If-None-Exist``, or the query string (how some FHIR
    clients ask for a conditional create: ``POST /Patient?identifier=…``). A query string is
    never ignored: both at once is a 400, as is a query string of anything but criteria."""
    criteria = [(n, v) for n, v in query if n not in NOT_CRITERIA]
    if not criteria:
        return if_none_exist or None
    if if_none_exist:
        raise BadRequest("a create takes If-None-Exist or search criteria in the URL, not both")
    if any(n.startswith("_") and n not in ("_id", "_lastUpdated") for n, _ in criteria):
        raise BadRequest("a create's query string may carry only search criteria")
    return urlencode(criteria)


def parse_query_string(text: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(
            text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_QUERY_FIELDS
        )
    except ValueError as exc:
        raise BadRequest("too many query parameters") from exc
