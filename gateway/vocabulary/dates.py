"""FHIR dates as the gateway compares them: fixed-width UTC stamps (text that sorts as time on
every database), and the implicit range of a date, dateTime or instant."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from gateway.errors import BadRequest


# Dates are kept as fixed-width UTC strings so that SQL compares them as text on both databases.
def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def date_span(value: Any) -> tuple[str, str] | None:
    if isinstance(value, dict):  # Period
        start = parse_date_range(value["start"])[0] if isinstance(value.get("start"), str) else None
        end = parse_date_range(value["end"])[1] if isinstance(value.get("end"), str) else None
        if start is None and end is None:
            return None
        return start or EARLIEST, end or LATEST
    if isinstance(value, str):
        try:
            return parse_date_range(value)
        except BadRequest:
            return None
    return None


def parse_date_range(text: str) -> tuple[str, str]:
    """The implicit range of a FHIR date/dateTime/instant, as (low, high) stamps inclusive. At
    the edges of the calendar (9999-12-31, or 0001-01-01 with an offset east of UTC) a bound a
    timestamp cannot hold is the earliest or the latest stamp, never an error."""
    try:
        if len(text) == 4:
            start, precision = _utc(int(text), 1, 1), "year"
        elif len(text) == 7:
            start, precision = _utc(int(text[:4]), int(text[5:7]), 1), "month"
        elif len(text) == 10:
            d = date.fromisoformat(text)
            start, precision = _utc(d.year, d.month, d.day), "day"
        else:
            start = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if start.tzinfo is None:
                start = start.replace(tzinfo=UTC)
            # A dateTime given to the second covers that whole second.
            precision = "second" if start.microsecond == 0 and "." not in text else "instant"
    except ValueError as exc:
        raise BadRequest("invalid date value") from exc
    late = start.year > 5000
    try:
        low = stamp(start)
    except OverflowError:
        low = LATEST if late else EARLIEST
    try:
        high = stamp(_last_instant(start, precision))
    except (OverflowError, ValueError):
        high = LATEST if late else EARLIEST
    return low, high


def _last_instant(start: datetime, precision: str) -> datetime:
    if precision == "year":
        return _utc(start.year + 1, 1, 1) - _TICK
    if precision == "month":
        return _utc(start.year + (start.month == 12), start.month % 12 + 1, 1) - _TICK
    if precision == "day":
        return start + timedelta(days=1) - _TICK
    if precision == "second":
        return start + timedelta(seconds=1) - _TICK
    return start


_TICK = timedelta(microseconds=1)
EARLIEST = stamp(datetime.min.replace(tzinfo=UTC))
LATEST = stamp(datetime.max.replace(tzinfo=UTC))


def _utc(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)
