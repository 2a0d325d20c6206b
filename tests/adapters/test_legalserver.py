"""The LegalServer adapter against a mocked site (respx): paging, rate limits and failures, the
normalised fields, survivor safety (unsafe phones and addresses never leave the adapter), bad
items as problems that name paths and never values, and the high-water mark."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import respx

from adapters._http import HttpPolicy, SourceClient
from adapters.legalserver import (
    CONSENT_FIELDS,
    HighWaterMark,
    LegalServerCoreAPI,
    LegalServerReports,
    Pull,
    legalserver_client,
)
from gateway.synth.legalserver import matter, report_row
from gateway.vocabulary.source import Place, SourceProblem, SourceRecord
from tests.adapters.test_http_client import FakeTime

BASE = "https://harbor-legal.legalserver.org"
TOKEN = "pat-9d1e7c44-harbor"
API_KEY = "c0ffee00-report-key-7741"
SAFE_PHONE = "+1-202-555-0111"
UNSAFE_PHONE = "+1-202-555-0166"


def make_matter(case_id: int = 1001, **changes: Any) -> dict[str, Any]:
    record = matter(random.Random(case_id), case_id)
    record.update(changes)
    return record


def safe_matter(case_id: int = 1001, **changes: Any) -> dict[str, Any]:
    """A matter whose every contact is marked safe, so a test can take one away."""
    base = make_matter(
        case_id,
        mobile_phone=SAFE_PHONE,
        mobile_phone_safe=True,
        home_phone="+1-202-555-0122",
        home_phone_safe=True,
        work_phone=None,
        work_phone_safe=True,
        safe_address=True,
    )
    base.update(changes)
    return base


def page(data: list[Any], number: int, pages: int, total: int | None = None) -> httpx.Response:
    body = {
        "page_number": number,
        "page_size": len(data),
        "total_number_of_pages": pages,
        "total_records": total if total is not None else len(data) * pages,
        "data": data,
    }
    return httpx.Response(200, content=orjson.dumps(body))


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def core(time: FakeTime, **options: Any) -> LegalServerCoreAPI:
    source = legalserver_client(BASE, token=TOKEN, sleep=time.sleep, clock=time.clock)
    return LegalServerCoreAPI(source, **options)


def record_of(pull: Pull) -> SourceRecord:
    assert len(pull.records) == 1, pull.items
    return pull.records[0]


def test_pages_until_total_number_of_pages_asking_full_results_in_id_order(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    pages = [[make_matter(1000 + 2 * p), make_matter(1001 + 2 * p)] for p in range(3)]
    route = mock.get("/api/v2/matters").mock(
        side_effect=[page(pages[p], p + 1, 3) for p in range(3)]
    )
    pull = core(time, page_size=2).pull()
    assert [r.source_id for r in pull.records] == [m["matter_uuid"] for p in pages for m in p]
    asked = [dict(call.request.url.params) for call in route.calls]
    assert [q["page_number"] for q in asked] == ["1", "2", "3"]
    assert all(
        q["results"] == "full" and q["sort"] == "asc" and q["page_size"] == "2" for q in asked
    )
    assert route.calls[0].request.url.params.get_list("custom_fields") == list(CONSENT_FIELDS)
    assert route.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"
    second = pull.records[3]
    assert (second.origin.source, second.origin.locator) == ("api/v2/matters", "page 2, item 1")
    assert (second.system, second.record_type) == ("legalserver", "matter")


def test_an_empty_site_is_one_request_and_no_records(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    route = mock.get("/api/v2/matters").mock(return_value=page([], 1, 0, 0))
    pull = core(time).pull()
    assert route.call_count == 1
    assert pull.items == ()
    assert pull.high_water_mark == HighWaterMark()


def test_http_basic_is_the_alternative_to_a_token(mock: respx.MockRouter, time: FakeTime) -> None:
    route = mock.get("/api/v2/matters").mock(return_value=page([], 1, 0, 0))
    source = legalserver_client(BASE, username="api_gateway", password="correct horse battery")
    LegalServerCoreAPI(source).pull()
    assert route.calls.last.request.headers["Authorization"].startswith("Basic ")


def test_429_waits_for_the_rate_limit_reset_and_the_pull_completes(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    over = {"x-rate-limit-limit": "200", "x-rate-limit-remaining": "0"}
    over["x-rate-limit-reset"] = str(int(time.now + 40))
    mock.get("/api/v2/matters").mock(
        side_effect=[
            page([make_matter(1001)], 1, 2),
            httpx.Response(429, headers=over, json={"id": "rate"}),
            page([make_matter(1002)], 2, 2),
        ]
    )
    pull = core(time).pull()
    assert len(pull.records) == 2
    assert not pull.problems
    assert time.sleeps == [40.0]


def test_retry_after_is_honoured_over_the_reset_header(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    headers = {"Retry-After": "12", "x-rate-limit-reset": str(int(time.now + 50))}
    mock.get("/api/v2/matters").mock(
        side_effect=[httpx.Response(429, headers=headers), page([make_matter()], 1, 1)]
    )
    core(time).pull()
    assert time.sleeps == [12.0]


def test_a_page_that_remains_unavailable_is_a_fatal_problem_and_paging_goes_on(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        number = int(request.url.params["page_number"])
        if number == 2:
            return httpx.Response(503)
        return page([make_matter(1000 + number)], number, 3)

    mock.get("/api/v2/matters").mock(side_effect=answer)
    start = HighWaterMark(datetime(2025, 1, 1, tzinfo=UTC))
    pull = core(time).pull(start)
    assert len(pull.records) == 2
    [problem] = pull.problems
    assert problem.fatal
    assert problem.origin.locator == "page 2"
    assert "page 2" in problem.reason
    assert "503" in problem.reason
    assert "attempts" in problem.reason
    assert TOKEN not in problem.reason
    assert pull.high_water_mark == start  # a window with a hole in it is read again


def test_401_is_not_retried_and_stops_the_pull_without_the_token(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    route = mock.get("/api/v2/matters").mock(
        return_value=httpx.Response(401, json={"error_message": "bad token"})
    )
    pull = core(time).pull()
    assert route.call_count == 1
    assert time.sleeps == []
    [problem] = pull.items
    assert isinstance(problem, SourceProblem)
    assert problem.fatal
    assert "401" in problem.reason
    assert TOKEN not in problem.reason


def test_a_malformed_page_is_a_fatal_problem_with_its_bytes_and_the_next_page_is_read(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    broken = b'{"page_number": 2, "data": [{"matter_uuid": '
    mock.get("/api/v2/matters").mock(
        side_effect=[
            page([make_matter(1001)], 1, 3),
            httpx.Response(200, content=broken),
            page([make_matter(1003)], 3, 3),
        ]
    )
    pull = core(time).pull()
    assert len(pull.records) == 2
    [problem] = pull.problems
    assert problem.fatal
    assert problem.origin.locator == "page 2"
    assert problem.origin.raw == broken


def test_a_page_without_a_total_cannot_be_trusted(mock: respx.MockRouter, time: FakeTime) -> None:
    mock.get("/api/v2/matters").mock(
        return_value=httpx.Response(
            200, json={"data": [make_matter()], "total_number_of_pages": "1"}
        )
    )
    pull = core(time).pull()
    assert pull.records == []
    assert len(pull.problems) == 1


def test_a_hostile_page_count_stops_at_the_first_empty_page(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    route = mock.get("/api/v2/matters").mock(
        side_effect=[page([make_matter(1001)], 1, 10**9, 10**9), page([], 2, 10**9, 10**9)]
    )
    pull = core(time).pull()
    assert route.call_count == 2
    assert len(pull.records) == 1
    assert "a page came back empty before the last" in [n.message for n in pull.notices]
    assert pull.high_water_mark == HighWaterMark()


def test_lookups_are_flattened_to_their_names_and_v1_dates_to_iso(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    item = make_matter(
        legal_problem_code={"lookup_value_name": "37 Domestic Abuse", "lookup_value_id": 37},
        special_legal_problem_code=[{"lookup_value_name": "Protective Order"}],
        case_status={"lookup_value_name": "Open - Active"},
        language={"lookup_value_name": "Vietnamese"},
        date_opened={"raw_value": "2026-03-02", "text_value": "03/02/2026"},
        date_closed=None,
    )
    mock.get("/api/v2/matters").mock(return_value=page([item], 1, 1))
    fields = record_of(core(time).pull()).fields
    assert fields["legal_problem_code"] == "37 Domestic Abuse"
    assert fields["special_legal_problem_code"] == ["Protective Order"]
    assert (fields["case_status"], fields["language"]) == ("Open - Active", "Vietnamese")
    assert (fields["date_opened"], fields["date_closed"]) == ("2026-03-02", None)


def test_fields_keep_what_mappings_need_and_drop_the_rest(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    item = make_matter(ssn="900-00-0000", a_number="A000000000", notes=[{"body": "private"}])
    mock.get("/api/v2/matters").mock(return_value=page([item], 1, 1))
    pull = core(time).pull()
    fields = record_of(pull).fields
    for needed in ("legal_problem_code", "case_status", "date_opened", "case_disposition",
                   "first", "last", "date_of_birth", "client_gender", "language",
                   "outgoing_referrals", "consent_to_share", "updated_at"):  # fmt: skip
        assert needed in fields
    for never in ("ssn", "a_number", "notes", "adverse_parties", "intake_office"):
        assert never not in fields
    [notice] = pull.notices
    assert {"ssn", "a_number", "notes", "adverse_parties"} <= set(notice.details["fields"])


def test_outgoing_referrals_become_a_list_of_normalised_referrals(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    referral = {
        "referral_uuid": "6f1b3c2e-7a55-4a1e-9f0e-3d1c2b4a5e6f",
        "referred_to": {
            "organization_name": "Riverside Safe Haven",
            "organization_uuid": "0b6a3e11-2c4d-4e8f-9a1b-7c6d5e4f3a2b",
        },
        "referral_date": "2026-04-09",
        "referral_type": {"lookup_value_name": "Warm Handoff"},
        "status": {"lookup_value_name": "Accepted"},
        "note": "client prefers afternoons",
    }
    mock.get("/api/v2/matters").mock(
        return_value=page([make_matter(outgoing_referrals=[referral])], 1, 1)
    )
    [shaped] = record_of(core(time).pull()).fields["outgoing_referrals"]
    assert shaped == {
        "referral_uuid": referral["referral_uuid"],
        "referred_to": referral["referred_to"],
        "referral_date": "2026-04-09",
        "referral_type": "Warm Handoff",
        "status": "Accepted",
    }


def test_a_phone_not_marked_safe_is_dropped_with_its_note_from_fields_and_raw(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    item = safe_matter(
        home_phone=UNSAFE_PHONE, home_phone_safe=False, home_phone_note="abuser answers"
    )
    mock.get("/api/v2/matters").mock(return_value=page([item], 1, 1))
    record = record_of(core(time).pull())
    assert "home_phone" not in record.fields
    assert "home_phone_note" not in record.fields
    assert record.fields["home_phone_safe"] is False
    assert record.fields["mobile_phone"] == SAFE_PHONE
    assert record.fields["mobile_phone_safe"]
    assert UNSAFE_PHONE.encode() not in record.origin.raw
    assert b"abuser answers" not in record.origin.raw
    assert SAFE_PHONE.encode() in record.origin.raw


@pytest.mark.parametrize("flag", ["missing", None, "true", 1, "t", {"value": True}])
def test_a_missing_or_unreadable_phone_flag_means_not_safe(
    mock: respx.MockRouter, time: FakeTime, flag: Any
) -> None:
    item = safe_matter(mobile_phone=UNSAFE_PHONE)
    if flag == "missing":
        del item["mobile_phone_safe"]
    else:
        item["mobile_phone_safe"] = flag
    mock.get("/api/v2/matters").mock(return_value=page([item], 1, 1))
    record = record_of(core(time).pull())
    assert "mobile_phone" not in record.fields
    assert record.fields["mobile_phone_safe"] is False
    assert UNSAFE_PHONE.encode() not in record.origin.raw


def test_the_schemas_work_phone_Safe_spelling_is_read_and_a_false_one_wins(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    spelled = safe_matter(1001, work_phone=SAFE_PHONE, work_phone_Safe=True)
    del spelled["work_phone_safe"]
    both = safe_matter(1002, work_phone=UNSAFE_PHONE, work_phone_safe=True, work_phone_Safe=False)
    mock.get("/api/v2/matters").mock(return_value=page([spelled, both], 1, 1))
    first, second = core(time).pull().records
    assert first.fields["work_phone"] == SAFE_PHONE
    assert first.fields["work_phone_safe"] is True
    assert "work_phone" not in second.fields
    assert "work_phone_Safe" not in second.fields


@pytest.mark.parametrize("flag", ["missing", False, None, "t"])
def test_an_address_not_marked_safe_is_dropped_entirely(
    mock: respx.MockRouter, time: FakeTime, flag: Any
) -> None:
    item = safe_matter(
        client_address_mailing={"street": "PO Box 7", "city": "Washington", "state": "DC"},
        matter_addresses=[{"street": "1 Hidden Way"}],
    )
    street = item["client_address_home"]["street"]
    if flag == "missing":
        del item["safe_address"]
    else:
        item["safe_address"] = flag
    mock.get("/api/v2/matters").mock(return_value=page([item], 1, 1))
    record = record_of(core(time).pull())
    for key in ("client_address_home", "client_address_mailing", "matter_addresses"):
        assert key not in record.fields
        assert key.encode() not in record.origin.raw
    assert record.fields["safe_address"] is False
    assert street.encode() not in record.origin.raw
    assert b"PO Box 7" not in record.origin.raw


def test_an_address_marked_safe_is_kept_in_shape(mock: respx.MockRouter, time: FakeTime) -> None:
    item = safe_matter(
        client_address_home={"street": "12 Cedar St", "apt_num": "3B", "city": "Arlington",
                             "state": "VA", "zip": 22201, "county": {"county_name": "Arlington"}},
    )  # fmt: skip
    mock.get("/api/v2/matters").mock(return_value=page([item], 1, 1))
    address = record_of(core(time).pull()).fields["client_address_home"]
    assert address == {"street": "12 Cedar St", "street_2": None, "apt_num": "3B",
                       "city": "Arlington", "state": "VA", "zip": "22201",
                       "county": "Arlington"}  # fmt: skip


def test_phone_lists_and_callbacks_without_flags_never_pass(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    item = safe_matter(
        phone_numbers=[{"number": UNSAFE_PHONE}],
        callbacks=[{"preferred_phone_other": UNSAFE_PHONE}],
    )
    mock.get("/api/v2/matters").mock(return_value=page([item], 1, 1))
    record = record_of(core(time).pull())
    assert UNSAFE_PHONE.encode() not in record.origin.raw
    assert "phone_numbers" not in record.fields
    assert "callbacks" not in record.fields


def test_consent_custom_fields_are_read_under_the_sites_names(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    names = {"consent_to_share": "roi_signed_31", "consent_recipients": "roi_recipients_32",
             "consent_start_date": "roi_start_33", "consent_end_date": "roi_end_34",
             "consent_form": "roi_form_35"}  # fmt: skip
    item = make_matter()
    for canonical in CONSENT_FIELDS:
        item.pop(canonical, None)
    item["custom_fields"] = {
        "roi_signed_31": "t",
        "roi_recipients_32": [{"lookup_value_name": "St. Mary's Clinic"}, "Riverside Safe Haven"],
        "roi_start_33": "2026-02-01",
        "roi_end_34": "2027-01-31",
    }
    item["roi_form_35"] = "ROI-2026-00017.pdf"
    route = mock.get("/api/v2/matters").mock(return_value=page([item], 1, 1))
    fields = record_of(core(time, consent_fields=names).pull()).fields
    assert route.calls.last.request.url.params.get_list("custom_fields") == list(names.values())
    assert {k: fields[k] for k in CONSENT_FIELDS} == {
        "consent_to_share": True,
        "consent_recipients": ["St. Mary's Clinic", "Riverside Safe Haven"],
        "consent_start_date": "2026-02-01",
        "consent_end_date": "2027-01-31",
        "consent_form": "ROI-2026-00017.pdf",
    }
    assert "roi_form_35" not in fields
    assert "custom_fields" not in fields


def test_no_consent_fields_means_no_consent(mock: respx.MockRouter, time: FakeTime) -> None:
    item = make_matter()
    for canonical in CONSENT_FIELDS:
        item.pop(canonical, None)
    mock.get("/api/v2/matters").mock(return_value=page([item], 1, 1))
    fields = record_of(core(time).pull()).fields
    assert fields["consent_to_share"] is None
    assert fields["consent_recipients"] == []


BAD_ITEMS = [
    ("a string", "María García", "data[1]", "not a JSON object"),
    ("no uuid", {"matter_uuid": None}, "data[1].matter_uuid", "matter_uuid"),
    ("bad uuid", {"matter_uuid": "María García"}, "data[1].matter_uuid", "matter_uuid"),
    ("bad date", {"date_opened": "31/02/2026"}, "data[1].date_opened", "date_opened"),
    ("impossible date", {"date_of_birth": "1990-02-30"}, "data[1].date_of_birth", "date_of_birth"),
    ("bad stamp", {"updated_at": "yesterday"}, "data[1].updated_at", "updated_at"),
    ("naive stamp", {"updated_at": "2026-11-02T10:00:00"}, "data[1].updated_at", "UTC offset"),
    ("huge field", {"case_title": "María García " * 10_000}, "data[1].case_title", "longer"),
    ("bad lookup", {"case_status": ["Open"]}, "data[1].case_status", "lookup"),
    ("bad consent", {"consent_to_share": "María"}, "data[1].consent_to_share", "true or false"),
    ("bad referral", {"outgoing_referrals": [{"referral_date": "soon"}]},
     "data[1].outgoing_referrals", "referral_date"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("_case", "change", "where", "says"), BAD_ITEMS, ids=[b[0] for b in BAD_ITEMS]
)
def test_a_bad_item_is_a_problem_naming_its_json_path_and_never_its_value(
    mock: respx.MockRouter, time: FakeTime, _case: str, change: Any, where: str, says: str
) -> None:
    bad = change if isinstance(change, str) else make_matter(1002, **change)
    mock.get("/api/v2/matters").mock(
        return_value=page([make_matter(1001), bad, make_matter(1003)], 1, 1)
    )
    pull = core(time).pull()
    assert len(pull.records) == 2
    [problem] = pull.problems
    assert not problem.fatal
    assert Place(field=where) in problem.places
    assert says in problem.reason
    shown = problem.reason + " ".join(p.field for p in problem.places) + problem.origin.locator
    assert "María" not in shown
    assert "García" not in shown
    assert "31/02" not in shown
    assert problem.origin.locator == "page 1, item 1"
    assert problem.origin.raw  # the bytes go to quarantine, not to the message


def test_a_bad_items_raw_bytes_are_scrubbed_of_unsafe_contacts_too(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    bad = safe_matter(date_opened="not a date", mobile_phone=UNSAFE_PHONE, mobile_phone_safe=False)
    mock.get("/api/v2/matters").mock(return_value=page([bad], 1, 1))
    [problem] = core(time).pull().problems
    assert UNSAFE_PHONE.encode() not in problem.origin.raw


def test_a_huge_item_is_refused_whole(mock: respx.MockRouter, time: FakeTime) -> None:
    bad = make_matter(notes=[{"body": "x" * 60_000} for _ in range(30)])
    mock.get("/api/v2/matters").mock(return_value=page([bad], 1, 1))
    [problem] = core(time).pull().problems
    assert problem.places == (Place(field="data[0]"),)
    assert "larger than" in problem.reason


def test_the_mark_is_the_newest_updated_at_and_round_trips_as_text(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    items = [
        make_matter(1001, updated_at="2026-11-01T09:00:00-05:00"),
        make_matter(1002, updated_at="2026-11-03T16:30:00-05:00"),
        make_matter(1003, updated_at="2026-10-20T08:00:00-05:00"),
    ]
    mock.get("/api/v2/matters").mock(return_value=page(items, 1, 1))
    mark = core(time).pull().high_water_mark
    assert mark.updated_at == datetime(2026, 11, 3, 21, 30, tzinfo=UTC)
    assert [uuid for uuid, _ in mark.recent] == [items[1]["matter_uuid"]]
    assert HighWaterMark.from_text(mark.to_text()) == mark


def test_a_pull_from_the_mark_sends_updates_to_old_matters_and_nothing_twice(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    old = make_matter(1001, updated_at="2026-11-01T09:00:00-05:00")
    edge = make_matter(1002, updated_at="2026-11-03T16:30:00-05:00")
    mock.get("/api/v2/matters").mock(return_value=page([old, edge], 1, 1))
    adapter = core(time, overlap=timedelta(minutes=5))
    mark = adapter.pull().high_water_mark

    twin = make_matter(1003, updated_at="2026-11-03T16:30:00-05:00")  # same instant as edge
    late = make_matter(1004, updated_at="2026-11-03T16:27:00-05:00")  # committed late, in overlap
    edited = copy.deepcopy(old) | {"updated_at": "2026-11-04T10:00:00-05:00"}
    mock.get("/api/v2/matters").mock(return_value=page([edited, edge, twin, late], 1, 1))
    again = adapter.pull(mark)
    assert [r.source_id for r in again.records] == [
        old["matter_uuid"],
        twin["matter_uuid"],
        late["matter_uuid"],
    ]
    third = adapter.pull(again.high_water_mark)
    assert third.records == []


def test_the_updated_since_parameter_carries_the_marks_lower_bound(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    route = mock.get("/api/v2/matters").mock(return_value=page([], 1, 0, 0))
    mark = HighWaterMark(datetime(2026, 11, 3, 21, 30, tzinfo=UTC))
    core(time, updated_since_param="updated_at", overlap=timedelta(minutes=10)).pull(mark)
    assert route.calls.last.request.url.params["updated_at"] == "2026-11-03T21:20:00+00:00"
    core(time).pull(mark)
    assert "updated_at" not in route.calls.last.request.url.params


NOT_MARKS = [
    "",
    "{}",
    '{"v":1}',
    '{"v":1,"updated_at":"María","recent":[]}',
    '{"v":1,"updated_at":null,"recent":[["x","2026-01-01T00:00:00+00:00"]]}',
    '{"v":1,"updated_at":"2026-01-01T00:00:00","recent":[]}',
]


@pytest.mark.parametrize("text", NOT_MARKS)
def test_a_mark_the_adapter_did_not_write_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        HighWaterMark.from_text(text)
    assert "María" not in str(caught.value)


def test_a_deletion_during_the_pull_holds_the_mark(mock: respx.MockRouter, time: FakeTime) -> None:
    mock.get("/api/v2/matters").mock(
        side_effect=[
            page([make_matter(1001)], 1, 2, total=4),
            page([make_matter(1003)], 2, 2, total=3),
        ]
    )
    pull = core(time).pull()
    assert len(pull.records) == 2
    assert pull.high_water_mark == HighWaterMark()
    assert "matters were deleted during the pull" in [n.message for n in pull.notices]


def test_a_matter_repeated_by_the_site_is_sent_once(mock: respx.MockRouter, time: FakeTime) -> None:
    item = make_matter(1001)
    mock.get("/api/v2/matters").mock(side_effect=[page([item], 1, 2), page([item], 2, 2)])
    pull = core(time).pull()
    assert len(pull.records) == 1
    [repeated] = [n for n in pull.notices if n.message == "matters repeated in the pull"]
    assert repeated.details == {"count": 1}


def test_one_matter_by_uuid(mock: respx.MockRouter, time: FakeTime) -> None:
    item = safe_matter()
    mock.get(f"/api/v2/matters/{item['matter_uuid']}").mock(
        return_value=httpx.Response(200, content=orjson.dumps({"data": item}))
    )
    got = core(time).matter(item["matter_uuid"])
    assert isinstance(got, SourceRecord)
    assert got.source_id == item["matter_uuid"]
    with pytest.raises(ValueError):
        core(time).matter("../users")


def reports(time: FakeTime, **options: Any) -> LegalServerReports:
    source = legalserver_client(BASE, token=TOKEN, sleep=time.sleep, clock=time.clock)
    return LegalServerReports(source, report=41, api_key=API_KEY, **options)


def test_report_booleans_and_numbers_are_normalised_and_unknown_columns_kept(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    row = report_row(safe_matter(date_closed=None))
    row |= {"interpreter": "t", "victim_of_domestic_violence": "f", "case_id": "1001",
            "days_open": "212", "number_of_children": "", "date_opened": "03/02/2026",
            "consent_to_share": "t",
            "consent_recipients": "Riverside Safe Haven, St. Mary's Clinic",
            "funding_code": "VOCA 2026", "intake_score": "17"}  # fmt: skip
    route = mock.get("/modules/report/api_export.php").mock(
        return_value=httpx.Response(200, content=orjson.dumps([row]))
    )
    pull = reports(time, filters={"lsf_office": "Main Office"}).pull()
    fields = record_of(pull).fields
    assert (fields["interpreter"], fields["victim_of_domestic_violence"]) == (True, False)
    assert (fields["case_id"], fields["days_open"], fields["number_of_children"]) == (
        1001,
        212,
        None,
    )
    assert fields["date_opened"] == "2026-03-02"
    assert fields["date_closed"] is None
    assert fields["consent_to_share"] is True
    assert fields["consent_recipients"] == ["Riverside Safe Haven", "St. Mary's Clinic"]
    assert (fields["funding_code"], fields["intake_score"]) == ("VOCA 2026", "17")  # as given
    params = route.calls.last.request.url.params
    assert (params["load"], params["api_key"], params["lsf_office"]) == (
        "41",
        API_KEY,
        "Main Office",
    )
    assert record_of(pull).origin.source == "report 41"


def test_report_rows_drop_unsafe_phones_and_addresses(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    row = report_row(safe_matter(mobile_phone=UNSAFE_PHONE))
    row |= {"mobile_phone_safe": "f", "home_phone_safe": "", "safe_address": "yes"}
    mock.get("/modules/report/api_export.php").mock(
        return_value=httpx.Response(200, content=orjson.dumps({"data": [row]}))
    )
    record = record_of(reports(time).pull())
    for gone in ("mobile_phone", "home_phone", "home_street", "home_city", "home_zip"):
        assert gone not in record.fields
    assert UNSAFE_PHONE.encode() not in record.origin.raw
    assert row["home_street"].encode() not in record.origin.raw
    assert record.fields["safe_address"] is False


def test_a_bad_report_boolean_is_a_problem_at_its_path(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    row = report_row(make_matter()) | {"interpreter": "María"}
    mock.get("/modules/report/api_export.php").mock(
        return_value=httpx.Response(200, content=orjson.dumps({"data": [row]}))
    )
    [problem] = reports(time).pull().problems
    assert problem.places == (Place(field="data[0].interpreter"),)
    assert "María" not in problem.reason


def test_a_report_that_stays_unavailable_is_fatal_without_its_api_key(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    mock.get("/modules/report/api_export.php").mock(return_value=httpx.Response(503))
    pull = reports(time).pull()
    [problem] = pull.items
    assert isinstance(problem, SourceProblem)
    assert problem.fatal
    assert "report 41" in problem.reason
    assert "503" in problem.reason
    assert API_KEY not in problem.reason
    assert API_KEY not in repr(problem)
    assert len(time.sleeps) == HttpPolicy().max_attempts - 1


def test_a_report_answered_in_xml_is_refused_whole(mock: respx.MockRouter, time: FakeTime) -> None:
    mock.get("/modules/report/api_export.php").mock(
        return_value=httpx.Response(200, content=b"<report><row><first>Ana</first></row></report>")
    )
    [problem] = reports(time).pull().problems
    assert problem.fatal
    assert "JSON" in problem.reason
    assert "Ana" not in problem.reason


def test_a_report_with_updated_at_keeps_a_mark(mock: respx.MockRouter, time: FakeTime) -> None:
    rows = [report_row(make_matter(1001)), report_row(make_matter(1002))]
    rows[0]["updated_at"] = "2026-11-01 09:00:00"  # a report's local time, no offset
    rows[1]["updated_at"] = "2026-11-02T09:00:00-05:00"
    mock.get("/modules/report/api_export.php").mock(
        return_value=httpx.Response(200, content=orjson.dumps(rows))
    )
    adapter = reports(time)
    mark = adapter.pull().high_water_mark
    assert mark.updated_at == datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
    assert adapter.pull(mark).records == []


def test_the_client_is_the_shared_one(time: FakeTime) -> None:
    assert isinstance(legalserver_client(BASE, token=TOKEN), SourceClient)
    with pytest.raises(ValueError):
        legalserver_client(BASE)
    with pytest.raises(ValueError):
        legalserver_client(BASE, token=TOKEN, username="u", password="p")
