"""A synthetic LegalServer: made-up matters shaped like the Core API v2 ``results=full`` answer,
the same matters as Reports API rows (booleans ``'t'``/``'f'``, numbers as strings), and a fake
site that serves them over real HTTP on loopback for the demo and the integration tests.

The fake site answers ``GET /api/v2/matters`` (``page_number``, ``page_size``, ``results``,
``sort``, ``custom_fields``, ``updated_at``), ``GET /api/v2/matters/{uuid}`` and
``GET /modules/report/api_export.php?load=N&api_key=K``; it takes a Bearer token or HTTP Basic,
counts requests per fixed window and answers 429 past ``rate_limit`` with LegalServer's
``x-rate-limit-limit``/``-remaining``/``-reset`` headers, and fails on request: 503 on the Nth
request, a malformed page. Two of its behaviours are this project's assumptions, not LegalServer's
documentation: ``updated_at`` filters "updated at or after", and matters carry
``outgoing_referrals`` (see ``docs/legalserver.md``).

Every person is made up (``gateway.synth.names``); phones are 555-01xx; nothing here imports the
rest of the gateway.
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import random
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from gateway.synth._serve import serving
from gateway.synth.names import Person, person

EASTERN: Final = timezone(timedelta(hours=-5))
TODAY: Final = date(2026, 12, 1)

LEGAL_PROBLEMS: Final = (
    ("37 Domestic Abuse", "03 Family", ()),
    ("37 Domestic Abuse", "03 Family", ("Protective Order",)),
    ("31 Custody/Visitation", "03 Family", ()),
    ("32 Divorce/Separation/Annulment", "03 Family", ()),
    (
        "81 Immigration/Naturalization",
        "08 Individual Rights",
        ("Immigration (T-visa/U-visa/VAWA)",),
    ),
    ("81 Immigration/Naturalization", "08 Individual Rights", ("Human Trafficking",)),
    ("63 Private Landlord/Tenant", "06 Housing", ()),
)
CLOSE_REASONS: Final = (
    "A - Counsel and Advice",
    "B - Limited Action",
    "F - Negotiated Settlement without Litigation",
    "IA - Uncontested Court Decision",
    "IB - Contested Court Decision",
)
OPEN_STATUSES: Final = ("Open - Active", "Open - Awaiting Documents", "Open - Court Date Set")
# The demo network's partners (examples/partners.yaml), and one organisation outside it.
PARTNERS: Final = (
    "Riverside Safe Haven",
    "St. Mary's Hospital",
    "Harbor Community Clinic",
    "Metro General Hospital",
)
STREETS: Final = ("Maple", "Cedar", "Juniper", "Lafayette", "Rhode Island", "Georgia", "Franklin")
CITIES: Final = (
    ("Washington", "DC", "200"),
    ("Hyattsville", "MD", "207"),
    ("Arlington", "VA", "222"),
)
LANGUAGES: Final = {"en": "English", "es": "Spanish", "vi": "Vietnamese"}
GENDERS: Final = {"F": "Female", "M": "Male", "U": "Unknown"}


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _lookup(rng: random.Random, name: str | None, type_name: str, table: str) -> dict[str, Any]:
    return {
        "lookup_value_id": rng.randint(1, 9999) if name else None,
        "lookup_value_name": name,
        "lookup_value_uuid": _uuid(rng) if name else None,
        "lookup_type_name": type_name,
        "lookup_type_table_name": table,
        "lookup_type_custom": False,
        "lookup_type_uuid": None,
    }


def _flag(rng: random.Random, safe_share: float) -> bool | None:
    """Safe, not safe, or never asked (``None``); the caller may also leave the flag out."""
    draw = rng.random()
    if draw < safe_share:
        return True
    return False if draw < safe_share + (1 - safe_share) * 0.7 else None


def _phone(rng: random.Random) -> str:
    return f"+1-202-555-01{rng.randint(0, 99):02d}"


def _email(someone: Person, rng: random.Random) -> str:
    plain = unicodedata.normalize("NFKD", f"{someone.given}.{someone.family}")
    local = "".join(c for c in plain if c.isascii() and (c.isalnum() or c == ".")).lower()
    return f"{local}{rng.randint(1, 99)}@example.org"


def _stamp(day: date, rng: random.Random) -> str:
    at = datetime(
        day.year, day.month, day.day, rng.randint(8, 18), rng.randint(0, 59), tzinfo=EASTERN
    )
    return at.isoformat()


def matter(rng: random.Random, case_id: int) -> dict[str, Any]:
    """One made-up matter, as ``GET /api/v2/matters?results=full`` would hold it."""
    client = person(rng, today=TODAY)
    code, category, special = rng.choice(LEGAL_PROBLEMS)
    intake = TODAY - timedelta(days=rng.randint(5, 900))
    opened = intake + timedelta(days=rng.randint(0, 10))
    closed = opened + timedelta(days=rng.randint(20, 300)) if rng.random() < 0.35 else None
    if closed is not None and closed > TODAY:
        closed = None
    disposition = "Closed" if closed else rng.choice(("Open", "Open", "Open", "Pending"))
    status = "Closed" if closed else rng.choice(OPEN_STATUSES)
    updated = min(TODAY, (closed or opened) + timedelta(days=rng.randint(0, 60)))
    city, state, zip_prefix = rng.choice(CITIES)
    lang = client.language
    record: dict[str, Any] = {
        "case_number": f"{opened.year % 100:02d}-{case_id:07d}",
        "case_id": case_id,
        "matter_uuid": _uuid(rng),
        "case_title": None,
        "client_id": 50_000 + case_id,
        "client_full_name": f"{client.given} {client.family}",
        "prefix": _lookup(rng, None, "Prefix", "prefix"),
        "first": client.given,
        "middle": None,
        "last": client.family,
        "suffix": None,
        "is_group": False,
        "organization_name": None,
        "client_email_address": _email(client, rng) if rng.random() < 0.7 else None,
        "case_disposition": _lookup(rng, disposition, "Case Disposition", "case_disposition"),
        "is_this_a_prescreen": False,
        "intake_office": {"office_name": "Main Office", "office_code": "MO"},
        "client_address_home": {
            "street": f"{rng.randint(100, 4999)} {rng.choice(STREETS)} St",
            "street_2": None,
            "apt_num": f"{rng.randint(1, 12)}{rng.choice('ABCD')}" if rng.random() < 0.5 else None,
            "city": city,
            "state": state,
            "zip": f"{zip_prefix}{rng.randint(0, 99):02d}",
            "county": {"county_name": None, "county_state": state, "county_FIPS": None},
        },
        "client_address_mailing": {
            "street": None,
            "street_2": None,
            "apt_num": None,
            "city": None,
            "state": None,
            "zip": None,
        },
        "date_opened": opened.isoformat(),
        "date_closed": closed.isoformat() if closed else None,
        "intake_date": intake.isoformat(),
        "date_rejected": None,
        "rejected": False,
        "client_gender": _lookup(rng, GENDERS[client.sex], "Genders", "gender"),
        "preferred_phone_number": _lookup(
            rng, "Mobile Phone", "Preferred Phone", "preferred_phone"
        ),
        "mobile_phone": client.phone,
        "mobile_phone_note": rng.choice((None, None, "Text only", "Do not leave voicemail")),
        "home_phone": _phone(rng) if rng.random() < 0.5 else None,
        "home_phone_note": None,
        "work_phone": _phone(rng) if rng.random() < 0.2 else None,
        "other_phone": None,
        "fax_phone": None,
        "language": _lookup(rng, LANGUAGES[lang], "Language", "language"),
        "second_language": _lookup(
            rng, "English" if lang != "en" and rng.random() < 0.5 else None, "Language", "language"
        ),
        "interpreter": lang != "en" and rng.random() < 0.6,
        "legal_problem_code": _lookup(rng, code, "Legal Problem Code", "problem_code"),
        "legal_problem_category": _lookup(
            rng, category, "Legal Problem Category", "problem_category"
        ),
        "special_legal_problem_code": [
            _lookup(rng, s, "Special Legal Problem Code", "special_problem_code") for s in special
        ],
        "date_of_birth": client.birth_date.isoformat(),
        "ssn": None,
        "case_status": _lookup(rng, status, "Case Status", "case_status"),
        "close_reason": _lookup(
            rng, rng.choice(CLOSE_REASONS) if closed else None, "Close Reason", "close_reason"
        ),
        "victim_of_domestic_violence": code.startswith("37") or rng.random() < 0.6,
        "adverse_parties": [{"first": "Opposing", "last": "Party", "relationship_type": None}],
        "notes": [],
        "created_at": _stamp(intake, rng),
        "updated_at": _stamp(updated, rng),
        "outgoing_referrals": [
            {
                "referral_uuid": _uuid(rng),
                "referred_to": {"organization_name": to, "organization_uuid": _uuid(rng)},
                "referral_date": min(
                    TODAY, opened + timedelta(days=rng.randint(0, 30))
                ).isoformat(),
                "referral_type": _lookup(rng, "Warm Handoff", "Referral Type", "referral_type"),
                "status": _lookup(
                    rng, rng.choice(("Pending", "Accepted")), "Referral Status", "referral_status"
                ),
            }
            for to in rng.sample(PARTNERS, rng.randint(0, 2))
        ],
    }
    # Safety flags: a mix of safe, not safe, never asked, and left out of the answer altogether.
    for phone, share in (("mobile", 0.6), ("home", 0.4), ("work", 0.3)):
        if rng.random() < 0.85:
            record[f"{phone}_phone_safe"] = _flag(rng, share)
    if rng.random() < 0.85:
        record["safe_address"] = _flag(rng, 0.3)
    consent = rng.random() < 0.7
    start = opened + timedelta(days=rng.randint(0, 5))
    record |= {
        "consent_to_share": consent,
        "consent_recipients": rng.sample(PARTNERS, rng.randint(1, 2)) if consent else [],
        "consent_start_date": start.isoformat() if consent else None,
        "consent_end_date": (start + timedelta(days=365)).isoformat() if consent else None,
        "consent_form": f"ROI-{start.year}-{case_id:05d}.pdf" if consent else None,
    }
    return record


def matters(n: int, *, seed: int) -> list[dict[str, Any]]:
    """``n`` made-up matters in id order (as LegalServer lists them), the same for the same seed."""
    rng = random.Random(seed)
    return [matter(rng, 1000 + i) for i in range(n)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dict):
        return _cell(value.get("lookup_value_name"))
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value)


REPORT_COLUMNS: Final = (
    "matter_uuid", "case_id", "case_number", "first", "last", "client_full_name", "date_of_birth",
    "client_gender", "language", "interpreter", "client_email_address", "legal_problem_code",
    "case_disposition", "case_status", "close_reason", "date_opened", "date_closed",
    "victim_of_domestic_violence", "mobile_phone", "mobile_phone_safe", "home_phone",
    "home_phone_safe", "work_phone", "work_phone_safe", "safe_address", "consent_to_share",
    "consent_recipients", "consent_start_date", "consent_end_date", "updated_at",
)  # fmt: skip


def report_row(record: Mapping[str, Any]) -> dict[str, str]:
    """A matter as a Reports API JSON row: every value a string, booleans ``'t'``/``'f'``."""
    row = {column: _cell(record.get(column)) for column in REPORT_COLUMNS}
    address = record.get("client_address_home") or {}
    for part in ("street", "apt_num", "city", "state", "zip"):
        row[f"home_{part}"] = _cell(address.get(part))
    row["days_open"] = str((TODAY - date.fromisoformat(record["date_opened"])).days)
    return row


@dataclass(frozen=True, slots=True)
class Failures:
    """What the fake site gets wrong on purpose: 503 on these request numbers (1-based, counting
    every request it receives), and broken JSON for these ``/api/v2/matters`` pages."""

    unavailable_on: frozenset[int] = frozenset()
    malformed_pages: frozenset[int] = frozenset()


@dataclass
class _Site:
    matters: Sequence[Mapping[str, Any]]
    token: str
    basic: tuple[str, str] | None
    rate_limit: int
    window: float
    fail: Failures
    report_keys: Mapping[int, str]
    clock: Callable[[], float]
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    window_start: float = -1.0
    in_window: int = 0

    def admit(self) -> tuple[int, bool, dict[str, str]]:
        """Count a request; its number, whether it is within the limit, the rate headers."""
        with self.lock:
            self.requests += 1
            now = self.clock()
            start = math.floor(now / self.window) * self.window
            if start != self.window_start:
                self.window_start, self.in_window = start, 0
            self.in_window += 1
            allowed = self.in_window <= self.rate_limit
            headers = {
                "x-rate-limit-limit": str(self.rate_limit),
                "x-rate-limit-remaining": str(max(0, self.rate_limit - self.in_window)),
                "x-rate-limit-reset": str(math.ceil(start + self.window)),
            }
            return self.requests, allowed, headers

    def authorised(self, header: str | None) -> bool:
        if header is None:
            return False
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer":
            return hmac.compare_digest(credential.encode(), self.token.encode())
        if scheme.lower() == "basic" and self.basic is not None:
            try:
                user, _, password = (
                    base64.b64decode(credential, validate=True).decode().partition(":")
                )
            except (ValueError, UnicodeDecodeError):
                return False
            return hmac.compare_digest(f"{user}:{password}", ":".join(self.basic))
        return False


def _visible(record: Mapping[str, Any], custom: Sequence[str], results: str) -> dict[str, Any]:
    if results != "full":  # LegalServer's default is the pro bono view: little of the matter
        keep = ("case_number", "case_id", "legal_problem_code", "legal_problem_category")
        return {k: record.get(k) for k in keep}
    return {k: v for k, v in record.items() if not k.startswith("consent_") or k in custom}


def _instant(text: str) -> datetime | None:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _handler(site: _Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeLegalServer/2"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: a request line may carry a report api_key."""

        def _send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: Any, headers: Mapping[str, str]) -> None:
            self._send(status, json.dumps(value).encode(), headers)

        def do_GET(self) -> None:
            number, allowed, rate = site.admit()
            if number in site.fail.unavailable_on:
                self._json(
                    503, {"error": "The server is currently experiencing a high load."}, rate
                )
                return
            if not allowed:
                self._json(429, {"id": "rate_limited"}, rate)
                return
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/modules/report/api_export.php":
                self._report(query, rate)
                return
            if not site.authorised(self.headers.get("Authorization")):
                self._json(
                    401, {"error_message": "User not authorized to perform this operation"}, rate
                )
                return
            if url.path == "/api/v2/matters":
                self._search(query, rate)
            elif url.path.startswith("/api/v2/matters/"):
                self._one(url.path.rsplit("/", 1)[-1], query, rate)
            else:
                self._json(404, {"error_message": "Unknown endpoint"}, rate)

        def _search(self, query: dict[str, list[str]], rate: Mapping[str, str]) -> None:
            try:
                page = max(1, int(query.get("page_number", ["1"])[0]))
                size = min(200, max(1, int(query.get("page_size", ["20"])[0])))
            except ValueError:
                self._json(400, {"invalid search values": ["page_number"]}, rate)
                return
            chosen = list(site.matters)
            since = query.get("updated_at", [""])[0]
            if since:
                floor = _instant(since)
                if floor is None:
                    self._json(400, {"invalid search values": ["updated_at"]}, rate)
                    return
                chosen = [
                    m for m in chosen if (_instant(str(m.get("updated_at"))) or floor) >= floor
                ]
            if query.get("sort", ["asc"])[0] == "desc":
                chosen.reverse()
            if page in site.fail.malformed_pages:
                self._send(200, b'{"page_number": %d, "data": [{"matter_uuid": ' % page, rate)
                return
            pages = math.ceil(len(chosen) / size)
            custom = query.get("custom_fields", [])
            results = query.get("results", ["pro_bono"])[0]
            data = [_visible(m, custom, results) for m in chosen[(page - 1) * size : page * size]]
            body = {
                "page_number": page,
                "page_size": size,
                "total_number_of_pages": pages,
                "total_records": len(chosen),
                "authorized_records": len(chosen),
                "data": data,
            }
            self._json(200, body, rate)

        def _one(self, wanted: str, query: dict[str, list[str]], rate: Mapping[str, str]) -> None:
            for record in site.matters:
                if record.get("matter_uuid") == wanted:
                    custom = query.get("custom_fields", [])
                    results = query.get("results", ["full"])[0]
                    self._json(200, {"data": _visible(record, custom, results)}, rate)
                    return
            self._json(404, {"error_message": "Unknown matter"}, rate)

        def _report(self, query: dict[str, list[str]], rate: Mapping[str, str]) -> None:
            try:
                load = int(query.get("load", ["0"])[0])
            except ValueError:
                load = 0
            key = site.report_keys.get(load)
            given = query.get("api_key", [""])[0]
            if key is None or not hmac.compare_digest(given.encode(), key.encode()):
                self._json(403, {"error_message": "Invalid report or api_key"}, rate)
                return
            if not site.authorised(self.headers.get("Authorization")):
                self._json(
                    401, {"error_message": "User not authorized to perform this operation"}, rate
                )
                return
            self._json(200, [report_row(m) for m in site.matters], rate)

    return Handler


@contextmanager
def serve_fake_legalserver(
    matters: Sequence[Mapping[str, Any]],
    *,
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    rate_limit: int = 200,
    fail: Failures | None = None,
    basic: tuple[str, str] | None = None,
    report_keys: Mapping[int, str] | None = None,
    window_seconds: float = 60.0,
    clock: Callable[[], float] = time.time,
) -> Iterator[str]:
    """Serve ``matters`` as a LegalServer site on ``host`` (port 0: a free port); yields the base
    URL. The site serves the very sequence it is given, so a test may change a matter while it
    runs. ``report_keys`` maps report numbers to their api_key; ``clock`` drives the rate window
    (a test shares its fake clock with the client's sleep)."""
    if rate_limit < 1 or window_seconds <= 0:
        raise ValueError("rate_limit and window_seconds must be positive")
    site = _Site(
        matters=matters,
        token=token,
        basic=basic,
        rate_limit=rate_limit,
        window=window_seconds,
        fail=fail or Failures(),
        report_keys=dict(report_keys or {}),
        clock=clock,
    )
    with serving(_handler(site), host=host, port=port, name="fake-legalserver") as base:
        yield base


__all__ = [
    "REPORT_COLUMNS",
    "Failures",
    "matter",
    "matters",
    "report_row",
    "serve_fake_legalserver",
]
