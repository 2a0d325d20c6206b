"""A hospital's FHIR R4 server as source records: Patient, ServiceRequest and CarePlan pulled by
search (``GET {base}/{Type}?_count=N&_lastUpdated=ge<instant>``), page after page through
``Bundle.link[relation=next]``, with the shared client (``adapters/_http.py``) and, for the
hospital, SMART Backend Services (``adapters/smart.py``). ``docs/fhir-pull.md`` is the contract.

Every resource becomes ``SourceRecord(system="fhir", record_type=<resourceType>,
source_id=<id>, fields=<the resource as parsed>, origin=Origin(<Type>, "page P, entry E", raw),
version="R4")``, or a ``SourceProblem`` naming JSON paths (``entry[3].resource.id``), never
values. The mapping (``mappings/fhir/``) decides what of it the gateway keeps.

A next link is followed only on the scheme, host, port and base path of the base URL: a hostile
server's link elsewhere would otherwise carry the gateway's token there. Such a link is a fatal
problem for that type (and the client's auth refuses to send a token outside the base anyway).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import orjson

from adapters._http import SourceClient, SourceError, SourceRefused
from adapters._pull import Pull as _Pull
from adapters.smart import TokenRefused
from gateway.vocabulary.source import (
    Origin,
    Place,
    SourceItem,
    SourceNotice,
    SourceProblem,
    SourceRecord,
)

SYSTEM: Final = "fhir"
VERSION: Final = "R4"
DEFAULT_TYPES: Final = ("Patient", "ServiceRequest", "CarePlan")

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE_NAME: Final = re.compile(r"[A-Z][A-Za-z]{1,63}")
# FHIR R4 ``instant``: to the second at least, with a time zone.
INSTANT_PATTERN: Final = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?"
    r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)
_NOT_UNDERSTOOD: Final = frozenset({"modifierExtension", "implicitRules"})
_SHOWN_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_ISSUE_WORD: Final = re.compile(r"[a-z][a-z-]{0,31}")
# After the base path, a next link may name the type searched (or its _search), or nothing
# (servers that page through the base itself, as HAPI's ``?_getpages=``).
_NEXT_REST: Final = re.compile(r"(/[A-Z][A-Za-z]{1,63}(/_search)?)?/?")


def parse_instant(text: Any) -> datetime | None:
    """A FHIR ``instant`` as an aware UTC datetime, or ``None`` (a leap second included: Python
    has none)."""
    if not isinstance(text, str) or not INSTANT_PATTERN.fullmatch(text):
        return None
    head, dot, rest = text.partition(".")
    if dot:  # more than microseconds: truncate (Python keeps six digits)
        digits = re.match(r"[0-9]+", rest)
        assert digits is not None
        text = f"{head}.{digits.group(0)[:6]}{rest[digits.end() :]}"
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at.astimezone(UTC)


def format_instant(at: datetime) -> str:
    """An aware datetime as a FHIR instant in UTC (``2026-12-01T08:30:00.000000Z``)."""
    if at.tzinfo is None:
        raise ValueError("naive datetime")
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one resource, one page and one pull may hold before they are refused."""

    max_resource_bytes: int = 1_048_576
    max_depth: int = 32
    max_string_chars: int = 1_048_576
    max_entries: int = 1_000
    max_pages: int = 1_000


@dataclass(frozen=True, slots=True)
class HighWaterMark:
    """Per resource type, the newest ``meta.lastUpdated`` of the last complete pull of that
    type, and the versions (type, id, lastUpdated) pulled within the overlap below it, so that
    re-reading the overlap sends nothing twice. The gateway stores ``to_text()`` per partner."""

    updated: tuple[tuple[str, datetime], ...] = ()
    recent: tuple[tuple[str, str, datetime], ...] = ()

    def of(self, resource_type: str) -> datetime | None:
        return dict(self.updated).get(resource_type)

    def to_text(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "updated": [[t, format_instant(at)] for t, at in self.updated],
                "recent": [[t, i, format_instant(at)] for t, i, at in self.recent],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_text(cls, text: str) -> HighWaterMark:
        """The mark ``to_text`` wrote; ``ValueError`` (quoting nothing) for anything else."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != 1:
                raise ValueError
            updated = []
            for kind, at in data["updated"]:
                stamp = parse_instant(at)
                if not (isinstance(kind, str) and _TYPE_NAME.fullmatch(kind)) or stamp is None:
                    raise ValueError
                updated.append((kind, stamp))
            recent = []
            for kind, rid, at in data["recent"]:
                stamp = parse_instant(at)
                if (
                    not (isinstance(kind, str) and _TYPE_NAME.fullmatch(kind))
                    or not (isinstance(rid, str) and ID_PATTERN.fullmatch(rid))
                    or stamp is None
                ):
                    raise ValueError
                recent.append((kind, rid, stamp))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError("not a FHIR high-water mark this adapter wrote") from exc
        return cls(tuple(updated), tuple(recent))


# One pull's items and the mark to store next (the mark of this adapter).
Pull = _Pull[HighWaterMark]


Finding = tuple[str, str]  # (JSON path, reason)


def _shown(key: str) -> str:
    """An object key as a path may show it: a name, or ``<key>`` (a key may be a value)."""
    return key if _SHOWN_KEY.fullmatch(key) else "<key>"


def size_findings(value: Any, path: str, limits: Limits) -> list[Finding]:
    """Depth and string-length findings for a parsed JSON value (iterative: no recursion limit
    for a hostile depth)."""
    findings: list[Finding] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    while stack and len(findings) < 8:
        node, where, depth = stack.pop()
        if depth > limits.max_depth:
            findings.append((where, f"nested deeper than {limits.max_depth} levels"))
            continue
        if isinstance(node, dict):
            for key, item in node.items():
                if len(key) > limits.max_string_chars:
                    findings.append((where, "an object key is too long"))
                    continue
                if key in _NOT_UNDERSTOOD:
                    # A modifier changes what the element means; not understood, it must not
                    # be dropped silently (FHIR R4 2.1.0.10): the resource is refused.
                    findings.append(
                        (f"{where}.{key}", f"carries {key}, which the gateway does not understand")
                    )
                    continue
                stack.append((item, f"{where}.{_shown(key)}", depth + 1))
        elif isinstance(node, list):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(node))
        elif isinstance(node, str) and len(node) > limits.max_string_chars:
            findings.append((where, f"a string is longer than {limits.max_string_chars} chars"))
    return findings


def security_findings(labels: Any, path: str) -> list[Finding]:
    """A security label that cannot be read exactly (a list of codings, each with a URI
    ``system`` and a ``code``) must never be dropped or kept half: dropping it could release
    what it restricts. The resource is refused instead."""
    if not isinstance(labels, list):
        return [(path, "meta.security is not a list")]
    findings: list[Finding] = []
    for index, label in enumerate(labels):
        here = f"{path}[{index}]"
        if not isinstance(label, dict):
            findings.append((here, "a security label is not a coding"))
            continue
        system, code = label.get("system"), label.get("code")
        if not (isinstance(system, str) and _URI.fullmatch(system)):
            findings.append((f"{here}.system", "a security label has no URI system"))
        if not (isinstance(code, str) and code.strip() and code == code.strip()):
            findings.append((f"{here}.code", "a security label has no code"))
    return findings


_URI: Final = re.compile(r"(?:https?://|urn:)[^\s]{1,4000}")


def _places(findings: Iterable[Finding]) -> tuple[Place, ...]:
    return tuple(Place(field=where) for where, _ in findings)


def _reason(findings: Sequence[Finding]) -> str:
    reasons = list(dict.fromkeys(reason for _, reason in findings))
    return "; ".join(reasons[:8]) + ("; ..." if len(reasons) > 8 else "")


def _problem(
    record_type: str,
    reason: str,
    origin: Origin,
    findings: Sequence[Finding] = (),
    fatal: bool = False,
) -> SourceProblem:
    return SourceProblem(SYSTEM, record_type, reason, origin, _places(findings), fatal)


class _Window:
    """One type's part of the mark: what is new since it, and where the pull moves it."""

    def __init__(self, resource_type: str, since: HighWaterMark, overlap: timedelta) -> None:
        self.type = resource_type
        self.mark = since.of(resource_type)
        self.overlap = overlap
        self.seen = {(i, at) for t, i, at in since.recent if t == resource_type}
        self.kept = [(i, at) for t, i, at in since.recent if t == resource_type]
        self.pulled: list[tuple[str, datetime]] = []

    @property
    def lower(self) -> datetime | None:
        return None if self.mark is None else self.mark - self.overlap

    def admits(self, rid: str, updated: datetime | None) -> bool:
        if updated is None:
            return True  # no meta.lastUpdated: nothing to mark it by, so it is always sent
        if self.lower is not None and updated < self.lower:
            return False
        if (rid, updated) in self.seen:
            return False
        self.pulled.append((rid, updated))
        return True

    def advanced(self) -> tuple[datetime | None, list[tuple[str, datetime]]]:
        stamps = [at for _, at in self.pulled]
        if self.mark is not None:
            stamps.append(self.mark)
        if not stamps:
            return None, []
        newest = max(stamps)
        keep = {(i, at) for i, at in [*self.kept, *self.pulled] if at >= newest - self.overlap}
        return newest, sorted(keep)

    def unchanged(self) -> tuple[datetime | None, list[tuple[str, datetime]]]:
        return self.mark, self.kept


@dataclass
class _TypeRun:
    """One type's pull: its items, whether it read every page, whether the pull must stop."""

    items: list[SourceItem] = field(default_factory=list)
    complete: bool = False
    stop_all: bool = False
    repeats: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)


class FhirPull:
    """Pulls ``types`` from one FHIR R4 server through ``client`` (whose base URL is
    ``base_url``; ``smart_fhir_client`` makes one with SMART Backend Services).

    ``overlap`` is how far below the mark each pull reads again: a server stamps
    ``meta.lastUpdated`` when a transaction starts, so a version committed after a pull can
    carry a stamp older than the newest that pull saw; versions already sent within the
    overlap are recognised by (type, id, lastUpdated) and not sent twice."""

    def __init__(
        self,
        client: SourceClient,
        base_url: str,
        *,
        types: Sequence[str] = DEFAULT_TYPES,
        page_size: int = 100,
        overlap: timedelta = timedelta(minutes=5),
        limits: Limits | None = None,
    ) -> None:
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        if not types or any(not _TYPE_NAME.fullmatch(t) for t in types):
            raise ValueError("types must be FHIR resource type names")
        if len(set(types)) != len(types):
            raise ValueError("a type is named twice")
        base = httpx.URL(base_url)
        if base.scheme not in ("http", "https") or not base.host or base.query:
            raise ValueError("base_url must be an absolute http(s) URL without a query")
        self._client = client
        self._base = base
        self._base_path = base.path.rstrip("/")
        self._types = tuple(types)
        self._page_size = page_size
        self._overlap = overlap
        self._limits = limits or Limits()

    def pull(self, since: HighWaterMark | None = None) -> Pull:
        mark = since or HighWaterMark()
        items: list[SourceItem] = []
        updated: list[tuple[str, datetime]] = []
        recent: list[tuple[str, str, datetime]] = []
        stopped = False
        for kind in self._types:
            window = _Window(kind, mark, self._overlap)
            if stopped:
                newest, keep = window.unchanged()
            else:
                run = self._pull_type(kind, window)
                items.extend(run.items)
                items.extend(self._summary(kind, run))
                newest, keep = window.advanced() if run.complete else window.unchanged()
                stopped = run.stop_all
            if newest is not None:
                updated.append((kind, newest))
            recent.extend((kind, i, at) for i, at in keep)
        return Pull(tuple(items), HighWaterMark(tuple(updated), tuple(recent)))

    @staticmethod
    def _summary(kind: str, run: _TypeRun) -> list[SourceNotice]:
        notices = []
        if run.repeats:
            notices.append(
                SourceNotice(
                    SYSTEM, "resources repeated in the pull", {"type": kind, "count": run.repeats}
                )
            )
        if run.skipped:
            notices.append(
                SourceNotice(
                    SYSTEM,
                    "entries that are not the type searched were skipped",
                    {"type": kind, "counts": dict(sorted(run.skipped.items()))},
                )
            )
        if run.outcomes:
            notices.append(
                SourceNotice(
                    SYSTEM,
                    "the server reported issues with the search",
                    {"type": kind, "issues": dict(sorted(run.outcomes.items()))},
                )
            )
        return notices

    # one type -----------------------------------------------------------------------------

    def _pull_type(self, kind: str, window: _Window) -> _TypeRun:
        run = _TypeRun()
        params: dict[str, Any] | None = {"_count": self._page_size}
        if window.lower is not None:
            assert params is not None
            params["_lastUpdated"] = f"ge{format_instant(window.lower)}"
        path = kind
        pulled_now: set[str] = set()
        followed: set[str] = set()
        page = 1
        while True:
            if page > self._limits.max_pages:
                run.items.append(
                    _problem(
                        kind,
                        f"{kind} search stopped at the page limit ({self._limits.max_pages})",
                        Origin(kind, f"page {page}"),
                        fatal=True,
                    )
                )
                return run
            body = self._page(kind, page, path, params, run)
            if body is None:
                return run
            for index, entry in enumerate(body["entry"]):
                item = self._entry(kind, page, index, entry, window, run)
                if isinstance(item, SourceRecord):
                    if item.source_id in pulled_now:
                        run.repeats += 1
                        continue
                    pulled_now.add(item.source_id)
                if item is not None:
                    run.items.append(item)
            followable, next_url = self._next(kind, page, body, run)
            if not followable:
                return run
            if next_url is None:
                run.complete = True
                return run
            if next_url in followed:
                run.items.append(
                    _problem(
                        kind,
                        f"page {page} links to a page already read",
                        Origin(kind, f"page {page}"),
                        fatal=True,
                    )
                )
                return run
            followed.add(next_url)
            path, params = next_url, None
            page += 1

    def _page(
        self,
        kind: str,
        page: int,
        path: str,
        params: dict[str, Any] | None,
        run: _TypeRun,
    ) -> dict[str, Any] | None:
        origin = Origin(kind, f"page {page}")
        try:
            response = self._client.get(path, params=params)
        except SourceRefused as exc:
            run.items.append(
                _problem(kind, f"{kind} page {page} refused: {exc.message}", origin, fatal=True)
            )
            # Credentials or permissions: no other page or type can be read either.
            run.stop_all = exc.status in (401, 403) or isinstance(exc, TokenRefused)
            return None
        except SourceError as exc:
            run.items.append(
                _problem(
                    kind,
                    f"{kind} page {page} could not be read: {exc.message}",
                    origin,
                    fatal=True,
                )
            )
            return None

        def bad(reason: str, where: str = "") -> None:
            findings = [(where, reason)] if where else []
            run.items.append(
                _problem(
                    kind,
                    f"{kind} page {page} {reason}",
                    Origin(kind, f"page {page}", response.content),
                    findings,
                    fatal=True,
                )
            )

        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            bad("is not JSON")
            return None
        if not isinstance(body, dict):
            bad("is not a JSON object")
            return None
        if body.get("resourceType") != "Bundle":
            bad("is not a Bundle", "resourceType")
            return None
        if body.get("type") != "searchset":
            bad("is not a searchset Bundle", "type")
            return None
        entries = body.get("entry", [])
        if not isinstance(entries, list):
            bad("has an entry that is not a list", "entry")
            return None
        if len(entries) > self._limits.max_entries:
            bad(f"has more than {self._limits.max_entries} entries", "entry")
            return None
        links = body.get("link", [])
        if not isinstance(links, list) or not all(isinstance(x, dict) for x in links):
            bad("has a link that is not a list of objects", "link")
            return None
        return {"entry": entries, "link": links}

    def _next(
        self, kind: str, page: int, body: dict[str, Any], run: _TypeRun
    ) -> tuple[bool, str | None]:
        """The next page as a path relative to the base (``None`` on the last page), or
        ``(False, None)`` with a fatal problem for a link the gateway will not follow."""
        nexts = [link for link in body["link"] if link.get("relation") == "next"]
        if not nexts:
            return True, None

        def refuse(reason: str) -> tuple[bool, str | None]:
            run.items.append(
                _problem(
                    kind,
                    f"{kind} page {page}: {reason}; the search stopped there",
                    Origin(kind, f"page {page}"),
                    [("link[relation=next].url", reason)],
                    fatal=True,
                )
            )
            return False, None

        if len(nexts) > 1:
            return refuse("more than one next link")
        url = nexts[0].get("url")
        if not isinstance(url, str) or not url or len(url) > 8192:
            return refuse("the next link has no usable url")
        try:
            target = self._base.join(url)
        except (httpx.InvalidURL, ValueError, TypeError):
            return refuse("the next link is not a URL")
        if target.userinfo or target.fragment:
            return refuse("the next link carries credentials or a fragment")
        if (
            target.scheme != self._base.scheme
            or target.host != self._base.host
            or (target.port or _default_port(target))
            != (self._base.port or _default_port(self._base))
        ):
            return refuse("the next link points to another server")
        raw_path = target.path
        if raw_path != self._base_path and not raw_path.startswith(f"{self._base_path}/"):
            return refuse("the next link is outside the base path")
        rest = raw_path[len(self._base_path) :]
        if not _NEXT_REST.fullmatch(rest) or "/.." in rest:
            return refuse("the next link is outside the base path")
        query = target.query.decode("ascii", "replace")
        relative = rest.lstrip("/")
        return True, (f"{relative}?{query}" if query else relative)

    # one entry ----------------------------------------------------------------------------

    def _entry(
        self, kind: str, page: int, index: int, entry: Any, window: _Window, run: _TypeRun
    ) -> SourceItem | None:
        path = f"entry[{index}]"
        locator = f"page {page}, entry {index}"
        if not isinstance(entry, dict):
            return _problem(
                kind, "entry is not a JSON object", Origin(kind, locator), [(path, "not an object")]
            )
        resource = entry.get("resource")
        raw = _dumps(resource if resource is not None else entry)
        origin = Origin(kind, locator, raw)
        if not isinstance(resource, dict):
            return _problem(
                kind,
                "entry has no resource object",
                origin,
                [(f"{path}.resource", "missing or not an object")],
            )
        rpath = f"{path}.resource"
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        found = resource.get("resourceType")
        if found == "OperationOutcome" and mode in ("outcome", None):
            self._outcome(resource, run)
            return None
        if mode == "include":
            shown = found if isinstance(found, str) and _TYPE_NAME.fullmatch(found) else "other"
            run.skipped[shown] = run.skipped.get(shown, 0) + 1
            return None
        if found != kind:
            return _problem(
                kind,
                f"a search match is not a {kind}",
                origin,
                [(f"{rpath}.resourceType", f"resourceType is not {kind}")],
            )
        if len(raw) > self._limits.max_resource_bytes:
            return _problem(
                kind,
                f"resource is larger than {self._limits.max_resource_bytes} bytes",
                origin,
                [(rpath, "too large")],
            )
        findings = size_findings(resource, rpath, self._limits)
        rid = resource.get("id")
        if not (isinstance(rid, str) and ID_PATTERN.fullmatch(rid)):
            findings.append((f"{rpath}.id", "id is missing or not a FHIR id"))
        meta = resource.get("meta")
        updated: datetime | None = None
        if meta is not None and not isinstance(meta, dict):
            findings.append((f"{rpath}.meta", "meta is not an object"))
        elif isinstance(meta, dict) and "lastUpdated" in meta:
            updated = parse_instant(meta["lastUpdated"])
            if updated is None:
                findings.append(
                    (f"{rpath}.meta.lastUpdated", "meta.lastUpdated is not a FHIR instant")
                )
        if isinstance(meta, dict) and "security" in meta:
            findings.extend(security_findings(meta["security"], f"{rpath}.meta.security"))
        if findings:
            return _problem(kind, _reason(findings), origin, findings)
        assert isinstance(rid, str)
        if not window.admits(rid, updated):
            return None
        return SourceRecord(SYSTEM, kind, rid, resource, origin, VERSION)

    @staticmethod
    def _outcome(resource: dict[str, Any], run: _TypeRun) -> None:
        issues = resource.get("issue")
        for issue in issues if isinstance(issues, list) else []:
            if not isinstance(issue, dict):
                continue
            severity, code = issue.get("severity"), issue.get("code")
            severity = (
                severity
                if isinstance(severity, str) and _ISSUE_WORD.fullmatch(severity)
                else "unknown"
            )
            code = code if isinstance(code, str) and _ISSUE_WORD.fullmatch(code) else "unknown"
            key = f"{severity}/{code}"
            if key in run.outcomes or len(run.outcomes) < 32:
                run.outcomes[key] = run.outcomes.get(key, 0) + 1


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def _dumps(value: Any) -> bytes:
    """The entry's bytes as parsed; empty for a value orjson cannot write back (nested past
    its limit: the depth finding refuses it anyway)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return b""


__all__ = [
    "DEFAULT_TYPES",
    "ID_PATTERN",
    "INSTANT_PATTERN",
    "SYSTEM",
    "VERSION",
    "FhirPull",
    "HighWaterMark",
    "Limits",
    "Pull",
    "format_instant",
    "parse_instant",
    "size_findings",
]
