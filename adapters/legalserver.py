"""LegalServer matters as source records, from the Core API v2 (``GET /api/v2/matters``, paged
with ``page_number``/``page_size`` until ``total_number_of_pages``) or from the Reports API
(``GET /modules/report/api_export.php?load=N&api_key=K``, one response per report).

Every matter becomes ``SourceRecord(system="legalserver", record_type="matter",
source_id=<matter_uuid>)`` or, when it cannot be read, a ``SourceProblem`` naming JSON paths
(``data[3].date_opened``), never values. ``docs/legalserver.md`` is the contract: which fields are
kept and how they are normalised, the consent custom fields, the high-water mark.

Survivor safety comes before completeness: a phone whose ``*_phone_safe`` flag is not exactly
true is dropped with its note, and every client address is dropped unless ``safe_address`` is
exactly true; a missing or unreadable flag means not safe. The same drop applies to the bytes kept
in ``Origin.raw``, so an unsafe number never leaves this module.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, Final

import httpx
import orjson

from adapters._http import (
    BearerAuth,
    HttpPolicy,
    SourceClient,
    SourceError,
    SourceRefused,
)
from adapters._pull import Pull as _Pull
from gateway.vocabulary.source import (
    Origin,
    Place,
    SourceItem,
    SourceNotice,
    SourceProblem,
    SourceRecord,
)

SYSTEM: Final = "legalserver"
RECORD_TYPE: Final = "matter"
MATTERS_PATH: Final = "/api/v2/matters"
REPORT_PATH: Final = "/modules/report/api_export.php"
MATTERS_SOURCE: Final = "api/v2/matters"

PHONES: Final = ("home", "mobile", "other", "work", "fax")
ADDRESS_PARTS: Final = ("street", "street_2", "apt_num", "city", "state", "zip", "county")
# The published v2 schema spells one flag ``work_phone_Safe``; both spellings are read.
_FLAG_SPELLINGS: Final = {p: (f"{p}_phone_safe", f"{p}_phone_Safe") for p in PHONES}
_ADDRESS_FLAGS: Final = ("safe_address", "home_address_safe")
# Keys that hold an address or a phone with no safety flag of its own: gated with the address,
# or (phone lists, callbacks) never kept.
_ADDRESS_KEYS: Final = ("client_address_home", "client_address_mailing", "matter_addresses")
_ADDRESS_COLUMNS: Final = tuple(f"{k}_{p}" for k in ("home", "mailing") for p in ADDRESS_PARTS)
_UNFLAGGED_PHONES: Final = ("phone_numbers", "callbacks")

CONSENT_FIELDS: Final = (
    "consent_to_share",
    "consent_recipients",
    "consent_start_date",
    "consent_end_date",
    "consent_form",
)

_TEXT: Final = (
    "case_number",
    "case_title",
    "external_id",
    "first",
    "middle",
    "last",
    "suffix",
    "client_full_name",
    "organization_name",
    "client_email_address",
)
_INTS: Final = ("case_id", "client_id", "days_open", "number_of_adults", "number_of_children")
_BOOLS: Final = (
    "is_group",
    "rejected",
    "is_this_a_prescreen",
    "interpreter",
    "victim_of_domestic_violence",
)
_DATES: Final = (
    "intake_date",
    "date_opened",
    "date_closed",
    "date_rejected",
    "prescreen_date",
    "date_of_birth",
)
_INSTANTS: Final = ("created_at", "updated_at")
_LOOKUPS: Final = (
    "prefix",
    "case_disposition",
    "case_status",
    "close_reason",
    "rejection_reason",
    "legal_problem_code",
    "legal_problem_category",
    "case_type",
    "intake_type",
    "how_referred",
    "client_gender",
    "pronouns",
    "language",
    "second_language",
    "preferred_phone_number",
    "dob_status",
)
_LOOKUP_LISTS: Final = ("special_legal_problem_code",)
# What the Core API path keeps: what the mappings need (CarePlan, ServiceRequest, Consent, the
# client), and nothing else the API user happens to see (SSN, adverse parties, case notes, ...).
CORE_FIELDS: Final = frozenset(
    {"matter_uuid", "outgoing_referrals", *_TEXT, *_INTS, *_BOOLS, *_DATES, *_INSTANTS}
    | {*_LOOKUPS, *_LOOKUP_LISTS, *_ADDRESS_KEYS[:2], *_ADDRESS_FLAGS}
    | {f"{p}_phone" for p in PHONES}
    | {f"{p}_phone_note" for p in PHONES}
    | {s for spellings in _FLAG_SPELLINGS.values() for s in spellings}
)

_EMPTY_IS_NULL: Final = frozenset(
    {*_TEXT, *_LOOKUPS, *_ADDRESS_COLUMNS}
    | {f"{p}_phone" for p in PHONES}
    | {f"{p}_phone_note" for p in PHONES}
)
_UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_ISO_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_US_DATE: Final = re.compile(r"(\d{2})/(\d{2})/(\d{4})")
_INTEGER: Final = re.compile(r"-?\d{1,18}")
_SHOWN_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one item, and one pull, may hold before it is refused."""

    max_string_chars: int = 65_536
    max_item_bytes: int = 1_048_576
    max_depth: int = 24
    max_pages: int = 10_000


@dataclass(frozen=True, slots=True)
class HighWaterMark:
    """Where the last complete pull stopped: the newest ``updated_at`` pulled, and the matters
    (uuid, ``updated_at``) pulled within the overlap below it, so that a re-read of that window
    sends nothing twice. The gateway stores ``to_text()`` per partner."""

    updated_at: datetime | None = None
    recent: tuple[tuple[str, datetime], ...] = ()

    def to_text(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None,
                "recent": [[uuid, at.isoformat()] for uuid, at in self.recent],
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
            raw_at = data["updated_at"]
            updated_at = None if raw_at is None else _aware(datetime.fromisoformat(raw_at))
            recent = tuple(
                (uuid, _aware(datetime.fromisoformat(at)))
                for uuid, at in data["recent"]
                if isinstance(uuid, str) and _UUID.fullmatch(uuid)
            )
            if len(recent) != len(data["recent"]):
                raise ValueError
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError("not a LegalServer high-water mark this adapter wrote") from exc
        return cls(updated_at, recent)


# One pull's items and the mark to store next (the mark of this adapter).
Pull = _Pull[HighWaterMark]


def legalserver_client(
    base_url: str,
    *,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
    policy: HttpPolicy | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> SourceClient:
    """The shared client for one LegalServer site (``https://<site>.legalserver.org``), with a
    personal access token (Bearer) or an API user's name and password (HTTP Basic)."""
    if (token is None) == (username is None or password is None):
        raise ValueError("give either a token or a username and password")
    auth: httpx.Auth = (
        BearerAuth(token) if token is not None else httpx.BasicAuth(username or "", password or "")
    )
    return SourceClient(
        base_url, policy=policy, auth=auth, transport=transport, sleep=sleep, clock=clock
    )


class _Unreadable(Exception):
    """One value could not be read; ``reason`` names the field, never the value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Finding = tuple[str, str]  # (JSON path, reason)


@dataclass
class _Read:
    """One item read: its fields, what was wrong (by path), and the keys it dropped."""

    fields: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)
    uuid: str = ""
    updated_at: datetime | None = None


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("naive datetime")
    return at.astimezone(UTC)


def _text(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _Unreadable(f"{name} is not text")


def _int(value: Any, name: str, strings: bool) -> int | None:
    if value is None or (strings and value == ""):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if strings and isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise _Unreadable(f"{name} is not a whole number")


def _bool(value: Any, name: str, strings: bool) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if strings and isinstance(value, str):
        if value in ("t", "f"):
            return value == "t"
        if value == "":
            return None
    raise _Unreadable(f"{name} is not true or false")


def _date(value: Any, name: str, strings: bool) -> str | None:
    if isinstance(value, dict) and "raw_value" in value:  # the v1 shape {raw_value, text_value}
        value = value["raw_value"]
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        if strings and (us := _US_DATE.fullmatch(text)):
            text = f"{us.group(3)}-{us.group(1)}-{us.group(2)}"
        if _ISO_DATE.fullmatch(text):
            try:
                return date.fromisoformat(text).isoformat()
            except ValueError:
                pass
    raise _Unreadable(f"{name} is not a yyyy-mm-dd date")


def _instant(value: Any, name: str, assume: tzinfo | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value) <= 40:
        try:
            at = datetime.fromisoformat(value.strip())
        except ValueError:
            at = None
        if at is not None:
            if at.tzinfo is None:
                if assume is None:
                    raise _Unreadable(f"{name} has no UTC offset")
                at = at.replace(tzinfo=assume)
            return at.astimezone(UTC)
    raise _Unreadable(f"{name} is not an ISO 8601 date-time")


def _lookup(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        label = value.get("lookup_value_name", value.get("county_name"))
        if label is None or isinstance(label, str):
            return label
    raise _Unreadable(f"{name} is not a lookup")


def _lookup_list(value: Any, name: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        labels = [_lookup(v, name) for v in value]
        return [label for label in labels if label]
    raise _Unreadable(f"{name} is not a list of lookups")


def _address(value: Any, name: str) -> dict[str, str | None] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Unreadable(f"{name} is not an address object")
    shaped: dict[str, str | None] = {}
    for part in ADDRESS_PARTS:
        raw = value.get(part)
        shaped[part] = _lookup(raw, f"{name}.{part}") if part == "county" else _text(raw, name)
    return shaped


def marked_safe(item: Mapping[str, Any], spellings: Sequence[str], strings: bool) -> bool:
    """True only when a flag is present and every spelling present says exactly true (JSON
    ``true``, or ``'t'`` in a report). Missing, null, ``'yes'``, 1: not safe."""
    present = [item[s] for s in spellings if s in item]
    if not present:
        return False
    return all(v is True or (strings and v == "t") for v in present)


def _unsafe_keys(item: Mapping[str, Any], strings: bool) -> set[str]:
    """The keys a survivor-safety rule removes from this item (fields and raw bytes alike)."""
    drop = set(_UNFLAGGED_PHONES)
    for phone in PHONES:
        if not marked_safe(item, _FLAG_SPELLINGS[phone], strings):
            drop |= {f"{phone}_phone", f"{phone}_phone_note"}
    if not marked_safe(item, _ADDRESS_FLAGS, strings):
        drop |= {*_ADDRESS_KEYS, *_ADDRESS_COLUMNS}
    return drop & set(item)


def scrubbed_raw(item: Any, strings: bool) -> bytes:
    """The item's JSON bytes without what the safety rules remove."""
    if isinstance(item, dict):
        drop = _unsafe_keys(item, strings)
        item = {k: v for k, v in item.items() if k not in drop}
    return orjson.dumps(item)


def _size_findings(value: Any, path: str, limits: Limits, depth: int = 0) -> list[Finding]:
    if depth > limits.max_depth:
        return [(path, f"nested deeper than {limits.max_depth} levels")]
    if isinstance(value, str):
        if len(value) > limits.max_string_chars:
            return [(path, f"longer than {limits.max_string_chars} characters")]
        return []
    found: list[Finding] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            shown = key if _SHOWN_NAME.fullmatch(key) else "<key>"
            found += _size_findings(inner, f"{path}.{shown}", limits, depth + 1)
            if len(key) > 256:
                found.append((f"{path}.<key>", "a key longer than 256 characters"))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _size_findings(inner, f"{path}[{index}]", limits, depth + 1)
    return found


class _MatterReader:
    """Turns one matter (Core API item or report row) into fields and findings."""

    def __init__(
        self,
        *,
        report: bool,
        consent_names: Mapping[str, str],
        limits: Limits,
        assume_tz: tzinfo | None,
    ) -> None:
        self.report = report
        self.consent_names = consent_names
        self.limits = limits
        self.assume_tz = assume_tz

    def read(self, item: Any, path: str) -> _Read:
        out = _Read()
        if not isinstance(item, dict):
            out.findings.append((path, "item is not a JSON object"))
            return out
        if len(orjson.dumps(item)) > self.limits.max_item_bytes:
            out.findings.append((path, f"item is larger than {self.limits.max_item_bytes} bytes"))
            return out
        out.findings += _size_findings(item, path, self.limits)
        if out.findings:
            return out
        uuid = item.get("matter_uuid")
        if isinstance(uuid, str) and _UUID.fullmatch(uuid):
            out.uuid = uuid.lower()
        else:
            out.findings.append((f"{path}.matter_uuid", "matter_uuid is missing or not a UUID"))
        self._fields(item, path, out)
        return out

    def _fields(self, item: dict[str, Any], path: str, out: _Read) -> None:
        strings = self.report
        drop = _unsafe_keys(item, strings)
        consent_sources = set(self.consent_names.values())
        for key, value in item.items():
            if key in drop or key in consent_sources or key == "custom_fields":
                continue
            if not self.report and key not in CORE_FIELDS:
                out.dropped.add(key)
                continue
            try:
                out.fields[key] = self._value(key, value, path)
            except _Unreadable as bad:
                out.findings.append((f"{path}.{key}", bad.reason))
        for phone in PHONES:
            out.fields[f"{phone}_phone_safe"] = marked_safe(item, _FLAG_SPELLINGS[phone], strings)
            out.fields.pop(f"{phone}_phone_Safe", None)
        out.fields["safe_address"] = marked_safe(item, _ADDRESS_FLAGS, strings)
        out.fields.pop("home_address_safe", None)
        if out.uuid:
            out.fields["matter_uuid"] = out.uuid
        self._consent(item, path, out)
        updated = out.fields.get("updated_at")
        if isinstance(updated, str):
            out.updated_at = datetime.fromisoformat(updated)
        elif not self.report:
            out.findings.append((f"{path}.updated_at", "updated_at is missing"))

    def _value(self, key: str, value: Any, path: str) -> Any:
        strings = self.report
        if strings and value == "" and key in _EMPTY_IS_NULL:
            return None  # a report's empty cell
        if key in _TEXT or key == "matter_uuid":
            return _text(value, key)
        if key in _INTS:
            return _int(value, key, strings)
        if key in _BOOLS:
            return _bool(value, key, strings)
        if key in _DATES:
            return _date(value, key, strings)
        if key in _INSTANTS:
            at = _instant(value, key, self.assume_tz if strings else None)
            return at.isoformat() if at else None
        if key in _LOOKUPS:
            return _lookup(value, key)
        if key in _LOOKUP_LISTS:
            return _lookup_list(value, key)
        if key in _ADDRESS_KEYS[:2]:
            return _address(value, key)
        if key == "outgoing_referrals" and not strings:
            return self._referrals(value, f"{path}.{key}")
        if key in _ADDRESS_COLUMNS or key.endswith(("_phone", "_phone_note")):
            return _text(value, key)
        return value  # a report column the adapter does not know: kept as given

    def _referrals(self, value: Any, path: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise _Unreadable("outgoing_referrals is not a list")
        shaped = []
        for index, referral in enumerate(value):
            where = f"outgoing_referrals[{index}]"
            if not isinstance(referral, dict):
                raise _Unreadable(f"{where} is not an object")
            to = referral.get("referred_to")
            if isinstance(to, str):
                to = {"organization_name": to}
            if to is not None and not isinstance(to, dict):
                raise _Unreadable(f"{where}.referred_to is not an organization")
            to = to or {}
            shaped.append(
                {
                    "referral_uuid": _text(referral.get("referral_uuid"), f"{where}.referral_uuid"),
                    "referred_to": {
                        "organization_name": _text(to.get("organization_name"), where),
                        "organization_uuid": _text(to.get("organization_uuid"), where),
                    },
                    "referral_date": _date(
                        referral.get("referral_date"), f"{where}.referral_date", False
                    ),
                    "referral_type": _lookup(referral.get("referral_type"), where),
                    "status": _lookup(referral.get("status"), where),
                }
            )
        return shaped

    def _consent(self, item: dict[str, Any], path: str, out: _Read) -> None:
        nested = item.get("custom_fields")
        nested = nested if isinstance(nested, dict) else {}
        strings = True  # custom booleans come as 't'/'f' from reports and some API sites
        for canonical in CONSENT_FIELDS:
            source = self.consent_names.get(canonical, canonical)
            if source in item:
                value, where = item[source], f"{path}.{source}"
            elif source in nested:
                value, where = nested[source], f"{path}.custom_fields.{source}"
            else:
                value, where = None, ""
            try:
                if canonical == "consent_to_share":
                    out.fields[canonical] = _bool(value, canonical, strings)
                elif canonical == "consent_recipients":
                    out.fields[canonical] = _lookup_list(value, canonical)
                elif canonical == "consent_form":
                    out.fields[canonical] = _text(value, canonical)
                else:
                    out.fields[canonical] = _date(value, canonical, True)
            except _Unreadable as bad:
                out.findings.append((where, bad.reason))


def _places(findings: Iterable[Finding]) -> tuple[Place, ...]:
    return tuple(Place(field=where) for where, _ in findings)


def _problem(
    reason: str, origin: Origin, findings: Sequence[Finding] = (), fatal: bool = False
) -> SourceProblem:
    return SourceProblem(SYSTEM, RECORD_TYPE, reason, origin, _places(findings), fatal)


def _reason(findings: Sequence[Finding]) -> str:
    reasons = list(dict.fromkeys(reason for _, reason in findings))
    return "; ".join(reasons[:8]) + ("; ..." if len(reasons) > 8 else "")


class _Window:
    """The high-water mark's filter: what is new since the mark, what the pull moves it to."""

    def __init__(self, since: HighWaterMark, overlap: timedelta) -> None:
        self.since = since
        self.overlap = overlap
        self.seen = set(since.recent)
        self.pulled: list[tuple[str, datetime]] = []

    @property
    def lower(self) -> datetime | None:
        return None if self.since.updated_at is None else self.since.updated_at - self.overlap

    def admits(self, uuid: str, updated_at: datetime | None) -> bool:
        if updated_at is None:
            return True  # a report without updated_at: every pull sends everything
        if self.lower is not None and updated_at < self.lower:
            return False
        if (uuid, updated_at) in self.seen:
            return False
        self.pulled.append((uuid, updated_at))
        return True

    def advanced(self) -> HighWaterMark:
        stamps = [at for _, at in self.pulled]
        if self.since.updated_at is not None:
            stamps.append(self.since.updated_at)
        if not stamps:
            return self.since
        newest = max(stamps)
        keep = {
            (u, at) for u, at in [*self.since.recent, *self.pulled] if at >= newest - self.overlap
        }
        return HighWaterMark(newest, tuple(sorted(keep)))


def _dropped_notice(dropped: set[str]) -> SourceNotice:
    shown = sorted(k for k in dropped if _SHOWN_NAME.fullmatch(k))
    return SourceNotice(
        SYSTEM,
        "matter fields the gateway does not take were dropped",
        {"fields": shown[:100], "count": len(dropped)},
    )


@dataclass
class _Page:
    data: list[Any]
    total_pages: int
    total_records: int | None


@dataclass
class _PageFailure:
    problem: SourceProblem
    stop: bool = False


class LegalServerCoreAPI:
    """Pulls matters from ``GET /api/v2/matters`` (``results=full``, ``sort=asc``: by id), page
    after page until ``total_number_of_pages``.

    ``consent_fields`` maps the canonical consent names (``CONSENT_FIELDS``) to the site's custom
    field database names when they differ. ``updated_since_param`` names a search parameter the
    site answers with "updated at or after" (LegalServer's ``updated_at``); without it every pull
    reads all pages and the mark filters them here."""

    def __init__(
        self,
        client: SourceClient,
        *,
        page_size: int = 100,
        consent_fields: Mapping[str, str] | None = None,
        updated_since_param: str | None = None,
        overlap: timedelta = timedelta(minutes=5),
        limits: Limits | None = None,
    ) -> None:
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        self._client = client
        self._page_size = page_size
        self._consent = dict(consent_fields or {})
        self._since_param = updated_since_param
        self._overlap = overlap
        self._limits = limits or Limits()
        self._reader = _MatterReader(
            report=False, consent_names=self._consent, limits=self._limits, assume_tz=None
        )

    def _params(self, page: int, window: _Window) -> dict[str, Any]:
        params: dict[str, Any] = {
            "results": "full",
            "sort": "asc",
            "page_number": page,
            "page_size": self._page_size,
            "custom_fields": [self._consent.get(name, name) for name in CONSENT_FIELDS],
        }
        if self._since_param and window.lower is not None:
            params[self._since_param] = window.lower.isoformat()
        return params

    def pull(self, since: HighWaterMark | None = None) -> Pull:
        window = _Window(since or HighWaterMark(), self._overlap)
        items: list[SourceItem] = []
        dropped: set[str] = set()
        pulled_now: set[str] = set()
        complete, repeats = True, 0
        page, last_page, first_total = 1, None, None
        while True:
            if page > self._limits.max_pages:
                items.append(SourceNotice(SYSTEM, "stopped at the page limit", {"page": page}))
                complete = False
                break
            outcome = self._page(page, window)
            if isinstance(outcome, _PageFailure):
                items.append(outcome.problem)
                complete = False
                # Without a total, or after a refusal (credentials, permissions), no page is next.
                if outcome.stop or last_page is None or page >= last_page:
                    break
                page += 1
                continue
            last_page = outcome.total_pages
            if first_total is None:
                first_total = outcome.total_records
            elif outcome.total_records is not None and outcome.total_records < first_total:
                # Offset paging: a deletion shifts a matter across a page boundary, unseen.
                items.append(
                    SourceNotice(SYSTEM, "matters were deleted during the pull", {"page": page})
                )
                first_total, complete = outcome.total_records, False
            for index, entry in enumerate(outcome.data):
                item = self._item(entry, page, index, window, dropped)
                if isinstance(item, SourceRecord):
                    if item.source_id in pulled_now:
                        repeats += 1
                        continue
                    pulled_now.add(item.source_id)
                if item is not None:
                    items.append(item)
            if page >= outcome.total_pages:
                break
            if not outcome.data:
                items.append(
                    SourceNotice(SYSTEM, "a page came back empty before the last", {"page": page})
                )
                complete = False
                break
            page += 1
        if repeats:
            items.append(SourceNotice(SYSTEM, "matters repeated in the pull", {"count": repeats}))
        if dropped:
            items.append(_dropped_notice(dropped))
        return Pull(tuple(items), window.advanced() if complete else window.since)

    def _page(self, page: int, window: _Window) -> _Page | _PageFailure:
        origin = Origin(MATTERS_SOURCE, f"page {page}")
        try:
            response = self._client.get(MATTERS_PATH, params=self._params(page, window))
        except SourceRefused as exc:
            return _PageFailure(
                _problem(f"page {page} refused: {exc.message}", origin, fatal=True), True
            )
        except SourceError as exc:
            return _PageFailure(
                _problem(f"page {page} could not be read: {exc.message}", origin, fatal=True)
            )
        bad = _PageFailure(
            _problem(
                f"page {page} is not a LegalServer search answer",
                Origin(MATTERS_SOURCE, f"page {page}", response.content),
                fatal=True,
            )
        )
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return bad
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            return bad
        total = body.get("total_number_of_pages")
        records = body.get("total_records")
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            return bad
        if not (records is None or (isinstance(records, int) and not isinstance(records, bool))):
            return bad
        return _Page(body["data"], total, records)

    def _item(
        self, entry: Any, page: int, index: int, window: _Window, dropped: set[str]
    ) -> SourceItem | None:
        read = self._reader.read(entry, f"data[{index}]")
        origin = Origin(MATTERS_SOURCE, f"page {page}, item {index}", scrubbed_raw(entry, False))
        if read.findings:
            return _problem(_reason(read.findings), origin, read.findings)
        dropped |= read.dropped
        if not window.admits(read.uuid, read.updated_at):
            return None
        return SourceRecord(SYSTEM, RECORD_TYPE, read.uuid, read.fields, origin)

    def matter(self, uuid: str) -> SourceItem:
        """One matter by its uuid (``GET /api/v2/matters/{uuid}``), outside any mark."""
        if not _UUID.fullmatch(uuid):
            raise ValueError("not a matter uuid")
        # Never the uuid in the source: operators see sources in clear (quarantine, Provenance).
        origin = Origin(MATTERS_SOURCE, "one matter")
        try:
            response = self._client.get(
                f"{MATTERS_PATH}/{uuid.lower()}",
                params={
                    "results": "full",
                    "custom_fields": [self._consent.get(n, n) for n in CONSENT_FIELDS],
                },
            )
            body = orjson.loads(response.content)
        except SourceError as exc:
            return _problem(f"the matter could not be read: {exc.message}", origin, fatal=True)
        except orjson.JSONDecodeError:
            return _problem("the answer is not JSON", origin, fatal=True)
        entry = body.get("data") if isinstance(body, dict) else None
        read = self._reader.read(entry, "data")
        origin = Origin(origin.source, "item", scrubbed_raw(entry, False))
        if read.findings:
            return _problem(_reason(read.findings), origin, read.findings)
        return SourceRecord(SYSTEM, RECORD_TYPE, read.uuid, read.fields, origin)


class LegalServerReports:
    """Pulls one report from the Reports API: ``GET api_export.php?load=<report>&api_key=<key>``,
    JSON. The report must carry a ``matter_uuid`` column; with an ``updated_at`` column the mark
    works as on the Core API. ``filters`` are the report's filter overrides, passed as given;
    ``since_filter`` names the override that takes the mark's lower bound."""

    def __init__(
        self,
        client: SourceClient,
        *,
        report: int,
        api_key: str,
        filters: Mapping[str, str] | None = None,
        since_filter: str | None = None,
        consent_fields: Mapping[str, str] | None = None,
        overlap: timedelta = timedelta(minutes=5),
        timezone: tzinfo = UTC,
        limits: Limits | None = None,
    ) -> None:
        if report < 1 or not api_key:
            raise ValueError("a report number and its api_key are needed")
        self._client = client
        self._report = report
        self._api_key = api_key
        self._filters = dict(filters or {})
        self._since_filter = since_filter
        self._overlap = overlap
        self._reader = _MatterReader(
            report=True,
            consent_names=dict(consent_fields or {}),
            limits=limits or Limits(),
            assume_tz=timezone,
        )

    def pull(self, since: HighWaterMark | None = None) -> Pull:
        window = _Window(since or HighWaterMark(), self._overlap)
        source = f"report {self._report}"
        params: dict[str, Any] = {**self._filters, "load": self._report, "api_key": self._api_key}
        if self._since_filter and window.lower is not None:
            params[self._since_filter] = window.lower.isoformat()
        try:
            response = self._client.get(REPORT_PATH, params=params)
        except SourceError as exc:
            problem = _problem(
                f"{source} could not be read: {exc.message}", Origin(source, "page 1"), fatal=True
            )
            return Pull((problem,), window.since)
        rows, key = self._rows(response.content)
        if rows is None:
            problem = _problem(
                f"{source} is not a JSON list of rows",
                Origin(source, "page 1", response.content),
                fatal=True,
            )
            return Pull((problem,), window.since)
        items: list[SourceItem] = []
        for index, row in enumerate(rows):
            read = self._reader.read(row, f"{key}[{index}]")
            origin = Origin(source, f"page 1, item {index}", scrubbed_raw(row, True))
            if read.findings:
                items.append(_problem(_reason(read.findings), origin, read.findings))
            elif window.admits(read.uuid, read.updated_at):
                items.append(SourceRecord(SYSTEM, RECORD_TYPE, read.uuid, read.fields, origin))
        return Pull(tuple(items), window.advanced())

    @staticmethod
    def _rows(content: bytes) -> tuple[list[Any] | None, str]:
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            return None, ""
        if isinstance(body, list):
            return body, ""
        if isinstance(body, dict):
            for key in ("data", "rows", "row"):
                if isinstance(body.get(key), list):
                    return body[key], key
        return None, ""


__all__ = [
    "CONSENT_FIELDS",
    "CORE_FIELDS",
    "MATTERS_PATH",
    "REPORT_PATH",
    "SYSTEM",
    "HighWaterMark",
    "LegalServerCoreAPI",
    "LegalServerReports",
    "Limits",
    "Pull",
    "legalserver_client",
    "marked_safe",
    "scrubbed_raw",
]
