"""The FHIR pull against a mocked hospital server (respx): paging through next links, a hostile
next link, bad bundles, oversize and wrong-type resources, refusals and failures, strict
instants, and the high-water mark. Problems name pages and JSON paths, never values."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
import respx

from adapters._http import HttpPolicy, SourceClient
from adapters.fhir import (
    FhirPull,
    HighWaterMark,
    Limits,
    Pull,
    format_instant,
    parse_instant,
)
from gateway.vocabulary.source import Place, SourceProblem, SourceRecord
from tests.adapters.test_http_client import FakeTime

BASE = "https://fhir.metro-general.example/r4"
SECRET_NAME = "Xiomara Quintanilla"
SECRET_DOB = "1987-03-14"


def patient(rid: str, updated: str = "2026-05-01T10:00:00Z", **more: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": rid,
        "meta": {"lastUpdated": updated},
        "name": [{"family": SECRET_NAME.split()[1], "given": [SECRET_NAME.split()[0]]}],
        "birthDate": SECRET_DOB,
        **more,
    }


def bundle(resources: list[Any], next_url: str | None = None, **more: Any) -> dict[str, Any]:
    links = [{"relation": "self", "url": f"{BASE}/Patient"}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
        **more,
    }


def empty() -> httpx.Response:
    return httpx.Response(200, json=bundle([]))


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def puller(time: FakeTime, **options: Any) -> FhirPull:
    client = SourceClient(
        BASE,
        policy=HttpPolicy(max_attempts=3),
        sleep=time.sleep,
        clock=time.clock,
    )
    return FhirPull(client, BASE, **options)


def only_patients(mock: respx.MockRouter, *pages: Any) -> respx.Route:
    route = mock.get(f"{BASE}/Patient").mock(side_effect=list(pages))
    mock.get(f"{BASE}/ServiceRequest").mock(side_effect=lambda r: empty())
    mock.get(f"{BASE}/CarePlan").mock(side_effect=lambda r: empty())
    return route


def no_secret(pull: Pull) -> None:
    shown = repr(
        [(i.reason, i.places, i.origin.source, i.origin.locator) for i in pull.problems]
    ) + repr([(n.message, n.details) for n in pull.notices])
    assert "Xiomara" not in shown
    assert "Quintanilla" not in shown
    assert SECRET_DOB not in shown


# paging -------------------------------------------------------------------------------------


def test_pages_are_followed_through_next_links_on_the_same_base(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    first = [patient(f"p{i}") for i in range(3)]
    second = [patient(f"p{i}") for i in range(3, 6)]
    third = [patient("p6")]
    route = only_patients(
        mock,
        httpx.Response(200, json=bundle(first, f"{BASE}/Patient?_page=2&_x=a%20b")),
        httpx.Response(200, json=bundle(second, f"{BASE}?_getpages=abc&_getpagesoffset=6")),
        httpx.Response(200, json=bundle(third)),
    )
    mock.get(BASE + "/").mock(return_value=httpx.Response(200, json=bundle(third)))
    pull = puller(time, page_size=3).pull()
    assert [r.source_id for r in pull.records if r.record_type == "Patient"][:3] == [
        "p0",
        "p1",
        "p2",
    ]
    first_query = parse_qs(urlsplit(str(route.calls[0].request.url)).query)
    assert first_query == {"_count": ["3"]}  # no mark: no _lastUpdated
    assert str(route.calls[1].request.url).endswith("/r4/Patient?_page=2&_x=a%20b")
    assert not pull.problems
    record = pull.records[0]
    assert record == SourceRecord(
        "fhir",
        "Patient",
        "p0",
        first[0],
        record.origin,
        "R4",
    )
    assert record.origin.source == "Patient"
    assert record.origin.locator == "page 1, entry 0"
    assert orjson.loads(record.origin.raw) == first[0]


def test_every_type_is_searched_in_turn(mock: respx.MockRouter, time: FakeTime) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        kind = request.url.path.rsplit("/", 1)[-1]
        seen.append(kind)
        return httpx.Response(200, json=bundle([{"resourceType": kind, "id": f"{kind.lower()}-1"}]))

    mock.get(url__regex=rf"{BASE}/\w+").mock(side_effect=answer)
    pull = puller(time).pull()
    assert seen == ["Patient", "ServiceRequest", "CarePlan"]
    assert [(r.record_type, r.source_id) for r in pull.records] == [
        ("Patient", "patient-1"),
        ("ServiceRequest", "servicerequest-1"),
        ("CarePlan", "careplan-1"),
    ]


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example/r4/Patient?_page=2",
        "http://fhir.metro-general.example/r4/Patient?_page=2",  # scheme
        "https://fhir.metro-general.example:8443/r4/Patient?_page=2",  # port
        "https://fhir.metro-general.example/other/Patient?_page=2",  # base path
        "https://fhir.metro-general.example/r4x/Patient?_page=2",
        "https://fhir.metro-general.example/r4/../admin/Patient",
        "https://fhir.metro-general.example/r4/Patient/p1/_history",
        "https://user:pw@fhir.metro-general.example/r4/Patient?_page=2",
        "//evil.example/r4/Patient",
    ],
)
def test_a_next_link_off_the_base_is_never_followed_and_stops_that_type(
    mock: respx.MockRouter, time: FakeTime, next_url: str
) -> None:
    only_patients(mock, httpx.Response(200, json=bundle([patient("p1")], next_url)))
    elsewhere = mock.route(host="evil.example").mock(return_value=empty())
    other = mock.get(url__regex=r".*/(other|admin|r4x)/.*").mock(return_value=empty())
    pull = puller(time).pull()
    assert elsewhere.call_count == 0
    assert other.call_count == 0
    (problem,) = pull.problems
    assert problem.fatal
    assert problem.record_type == "Patient"
    assert problem.places == (Place(field="link[relation=next].url"),)
    assert "evil" not in problem.reason
    assert "_page" not in problem.reason
    assert [r.source_id for r in pull.records] == ["p1"]  # what was read before is kept
    assert pull.high_water_mark.of("Patient") is None  # the type did not finish: no mark
    assert mock.calls.call_count == 3  # the other types were still pulled


def test_a_next_link_to_a_page_already_read_stops_the_loop(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    loop = f"{BASE}/Patient?_page=again"
    only_patients(
        mock,
        httpx.Response(200, json=bundle([patient("p1")], loop)),
        httpx.Response(200, json=bundle([patient("p2")], loop)),
    )
    pull = puller(time).pull()
    assert [p.reason for p in pull.problems] == ["page 2 links to a page already read"]


def test_the_page_limit_stops_a_server_that_never_ends(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    counter = iter(range(100))

    def endless(request: httpx.Request) -> httpx.Response:
        n = next(counter)
        return httpx.Response(200, json=bundle([patient(f"p{n}")], f"{BASE}/Patient?_page={n}"))

    mock.get(url__regex=rf"{BASE}/Patient.*").mock(side_effect=endless)
    mock.get(url__regex=rf"{BASE}/(ServiceRequest|CarePlan).*").mock(return_value=empty())
    pull = puller(time, limits=Limits(max_pages=4)).pull()
    assert len([r for r in pull.records if r.record_type == "Patient"]) == 4
    (problem,) = pull.problems
    assert problem.fatal
    assert "page limit" in problem.reason


# bad pages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason", "field"),
    [
        (b"{not json " + SECRET_NAME.encode(), "is not JSON", None),
        (b'["Xiomara"]', "is not a JSON object", None),
        (
            json.dumps({"resourceType": "Patient", "id": "x"}).encode(),
            "is not a Bundle",
            "resourceType",
        ),
        (
            json.dumps({"resourceType": "Bundle", "type": "collection"}).encode(),
            "is not a searchset Bundle",
            "type",
        ),
        (
            json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": {"a": 1}}).encode(),
            "has an entry that is not a list",
            "entry",
        ),
        (
            json.dumps({"resourceType": "Bundle", "type": "searchset", "link": "x"}).encode(),
            "has a link that is not a list of objects",
            "link",
        ),
    ],
)
def test_a_page_that_is_not_a_searchset_bundle_is_a_fatal_problem_with_its_bytes(
    mock: respx.MockRouter, time: FakeTime, content: bytes, reason: str, field: str | None
) -> None:
    only_patients(mock, httpx.Response(200, content=content))
    pull = puller(time).pull()
    (problem,) = pull.problems
    assert problem.fatal
    assert problem.reason == f"Patient page 1 {reason}"
    assert problem.origin.raw == content  # quarantined whole
    assert problem.places == ((Place(field=field),) if field else ())
    no_secret(pull)


def test_more_entries_than_the_limit_refuse_the_page(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    only_patients(mock, httpx.Response(200, json=bundle([patient(f"p{i}") for i in range(5)])))
    pull = puller(time, limits=Limits(max_entries=4)).pull()
    assert [p.reason for p in pull.problems] == ["Patient page 1 has more than 4 entries"]
    assert not pull.records


# entries ------------------------------------------------------------------------------------


def test_included_resources_and_search_outcomes_are_skipped_with_a_notice(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    page = bundle([patient("p1")])
    page["entry"] += [
        {"resource": {"resourceType": "Organization", "id": "o1"}, "search": {"mode": "include"}},
        {
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "warning",
                        "code": "processing",
                        "diagnostics": f"ignored name={SECRET_NAME}",
                    },
                    {"severity": "warning", "code": SECRET_NAME},
                ],
            },
            "search": {"mode": "outcome"},
        },
    ]
    only_patients(mock, httpx.Response(200, json=page))
    pull = puller(time).pull()
    assert [r.source_id for r in pull.records] == ["p1"]
    assert not pull.problems
    details = {n.message: n.details for n in pull.notices}
    assert details["entries that are not the type searched were skipped"] == {
        "type": "Patient",
        "counts": {"Organization": 1},
    }
    assert details["the server reported issues with the search"] == {
        "type": "Patient",
        "issues": {"warning/processing": 1, "warning/unknown": 1},
    }
    no_secret(pull)


def test_a_match_of_the_wrong_type_is_a_problem_naming_its_path(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    wrong = {"resourceType": "Observation", "id": "o1", "valueString": SECRET_NAME}
    only_patients(mock, httpx.Response(200, json=bundle([patient("p1"), wrong])))
    pull = puller(time).pull()
    (problem,) = pull.problems
    assert not problem.fatal
    assert problem.places == (Place(field="entry[1].resource.resourceType"),)
    assert problem.origin.locator == "page 1, entry 1"
    assert orjson.loads(problem.origin.raw) == wrong
    assert [r.source_id for r in pull.records] == ["p1"]
    no_secret(pull)


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"id": None}, "entry[0].resource.id", "id is missing or not a FHIR id"),
        ({"id": "has space"}, "entry[0].resource.id", "id is missing or not a FHIR id"),
        ({"id": "x" * 65}, "entry[0].resource.id", "id is missing or not a FHIR id"),
        ({"id": 12}, "entry[0].resource.id", "id is missing or not a FHIR id"),
        (
            {"meta": {"lastUpdated": "2026-05-01T10:00:00"}},
            "entry[0].resource.meta.lastUpdated",
            "meta.lastUpdated is not a FHIR instant",
        ),
        ({"meta": "x"}, "entry[0].resource.meta", "meta is not an object"),
        (
            {"modifierExtension": [{"url": "http://x", "valueBoolean": True}]},
            "entry[0].resource.modifierExtension",
            "carries modifierExtension, which the gateway does not understand",
        ),
        (
            {"name": [{"family": "F", "modifierExtension": [{"url": "http://x"}]}]},
            "entry[0].resource.name[0].modifierExtension",
            "carries modifierExtension, which the gateway does not understand",
        ),
    ],
)
def test_an_unreadable_resource_is_a_problem_naming_paths_not_values(
    mock: respx.MockRouter,
    time: FakeTime,
    change: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    doc = patient("p1")
    doc.update(change)
    if doc.get("id") is None:
        del doc["id"]
    only_patients(mock, httpx.Response(200, json=bundle([doc, patient("p2")])))
    pull = puller(time).pull()
    (problem,) = pull.problems
    assert problem.places == (Place(field=field),)
    assert problem.reason == reason
    assert [r.source_id for r in pull.records] == ["p2"]
    no_secret(pull)


def test_a_resource_over_the_size_limit_is_refused(mock: respx.MockRouter, time: FakeTime) -> None:
    big = patient("p1", note="x" * 5000)
    only_patients(mock, httpx.Response(200, json=bundle([big, patient("p2")])))
    pull = puller(time, limits=Limits(max_resource_bytes=4096)).pull()
    (problem,) = pull.problems
    assert problem.reason == "resource is larger than 4096 bytes"
    assert problem.places == (Place(field="entry[0].resource"),)


def test_a_resource_nested_too_deep_is_refused_without_recursion(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    # 600 levels: past orjson's limit for writing back, within its limit for reading.
    deep = '{"a":' * 600 + '"bottom"' + "}" * 600
    doc = orjson.dumps(patient("p1", extension=["HOLE"]))
    page = orjson.dumps(bundle([])).replace(b'"entry":[]', b'"entry":[{"resource":%s}]' % doc)
    content = page.replace(b'"HOLE"', deep.encode())
    only_patients(mock, httpx.Response(200, content=content))
    pull = puller(time, limits=Limits(max_depth=32)).pull()
    (problem,) = pull.problems
    assert problem.reason == "nested deeper than 32 levels"
    assert problem.places[0].field.startswith("entry[0].resource.extension[0].a.a")


def test_object_keys_that_are_not_names_are_not_shown_in_paths(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    doc = patient("p1", extension=[{SECRET_NAME: {"b": "x" * 50}}])  # strings else < 40
    only_patients(mock, httpx.Response(200, json=bundle([doc])))
    pull = puller(time, limits=Limits(max_string_chars=40)).pull()
    (problem,) = pull.problems
    assert problem.places == (Place(field="entry[0].resource.extension[0].<key>.b"),)
    no_secret(pull)


def test_entries_that_are_not_objects_or_hold_no_resource_are_problems(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    page = bundle([patient("p1")])
    page["entry"] += ["Xiomara", {"fullUrl": "x"}]
    only_patients(mock, httpx.Response(200, json=page))
    pull = puller(time).pull()
    assert [p.places for p in pull.problems] == [
        (Place(field="entry[1]"),),
        (Place(field="entry[2].resource"),),
    ]
    no_secret(pull)


def test_a_resource_on_two_pages_is_sent_once_with_a_notice(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    only_patients(
        mock,
        httpx.Response(200, json=bundle([patient("p1"), patient("p2")], f"{BASE}/Patient?_page=2")),
        httpx.Response(200, json=bundle([patient("p2"), patient("p3")])),
    )
    pull = puller(time).pull()
    assert [r.source_id for r in pull.records] == ["p1", "p2", "p3"]
    assert {n.message: n.details for n in pull.notices}["resources repeated in the pull"] == {
        "type": "Patient",
        "count": 1,
    }


# refusals and failures ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_stop_the_whole_pull(
    mock: respx.MockRouter, time: FakeTime, status: int
) -> None:
    only_patients(mock, httpx.Response(status, json={"issue": [{"diagnostics": SECRET_NAME}]}))
    mark = HighWaterMark((("CarePlan", datetime(2026, 1, 1, tzinfo=UTC)),))
    pull = puller(time).pull(mark)
    (problem,) = pull.problems
    assert problem.fatal
    assert f"answered {status}" in problem.reason
    assert mock.calls.call_count == 1  # no other type was asked
    assert pull.high_water_mark == mark
    no_secret(pull)


def test_a_404_stops_only_that_type(mock: respx.MockRouter, time: FakeTime) -> None:
    only_patients(mock, httpx.Response(404))
    pull = puller(time).pull()
    assert len(pull.problems) == 1
    assert mock.calls.call_count == 3


def test_503_is_retried_then_a_fatal_problem_names_the_page(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    route = only_patients(
        mock,
        httpx.Response(200, json=bundle([patient("p1")], f"{BASE}/Patient?_page=2&name=Xiomara")),
        httpx.Response(503),
        httpx.Response(503),
        httpx.Response(503),
    )
    pull = puller(time).pull()
    (problem,) = pull.problems
    assert problem.fatal
    assert problem.reason == (
        "Patient page 2 could not be read: GET /r4/Patient answered 503 after 3 attempts"
    )
    assert route.call_count == 4
    assert len(time.sleeps) == 2
    assert pull.high_water_mark.of("Patient") is None


def test_429_with_retry_after_waits_and_succeeds(mock: respx.MockRouter, time: FakeTime) -> None:
    only_patients(
        mock,
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(200, json=bundle([patient("p1")])),
    )
    pull = puller(time).pull()
    assert [r.source_id for r in pull.records] == ["p1"]
    assert time.sleeps == [7.0]


# instants and the high-water mark -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-01T10:00:00Z", datetime(2026, 5, 1, 10, tzinfo=UTC)),
        ("2026-05-01T10:00:00.123456789+02:00", datetime(2026, 5, 1, 8, 0, 0, 123456, tzinfo=UTC)),
        ("2026-05-01T10:00:00-14:00", datetime(2026, 5, 2, 0, tzinfo=UTC)),
        ("2026-05-01T10:00:00", None),  # no zone
        ("2026-05-01", None),
        ("2026-05-01T10:00Z", None),  # no seconds
        ("2026-05-01 10:00:00Z", None),
        ("2026-13-01T10:00:00Z", None),
        ("2026-02-30T10:00:00Z", None),
        ("2026-05-01T10:00:60Z", None),  # a leap second Python cannot hold
        ("2026-05-01T10:00:00+15:00", None),
        (" 2026-05-01T10:00:00Z", None),
        (20260501, None),
    ],
)
def test_instants_are_parsed_strictly(text: Any, expected: datetime | None) -> None:
    assert parse_instant(text) == expected


def test_the_mark_reads_the_overlap_again_and_sends_nothing_twice(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    old = patient("p1", "2026-05-01T09:50:00Z")
    edge = patient("p2", "2026-05-01T10:00:00Z")
    only_patients(mock, httpx.Response(200, json=bundle([old, edge])))
    first = puller(time).pull()
    mark = first.high_water_mark
    assert mark.of("Patient") == datetime(2026, 5, 1, 10, tzinfo=UTC)
    assert ("Patient", "p2", datetime(2026, 5, 1, 10, tzinfo=UTC)) in mark.recent
    assert all(i != "p1" for _, i, _ in mark.recent)  # outside the overlap: forgotten

    stored = HighWaterMark.from_text(mark.to_text())
    assert stored == mark
    updated = patient("p2", "2026-05-01T10:03:00Z")
    late = patient("p3", "2026-05-01T09:58:00Z")  # committed late, stamped early
    route = mock.get(f"{BASE}/Patient").mock(
        return_value=httpx.Response(200, json=bundle([edge, updated, late, old]))
    )
    second = puller(time).pull(stored)
    query = parse_qs(urlsplit(str(route.calls.last.request.url)).query)
    assert query["_lastUpdated"] == [f"ge{format_instant(datetime(2026, 5, 1, 9, 55, tzinfo=UTC))}"]
    # The version already sent is not sent again, the new version and the late one are, and
    # one below the overlap (a server ignoring _lastUpdated) is not.
    assert [(r.source_id, r.fields["meta"]["lastUpdated"]) for r in second.records] == [
        ("p2", "2026-05-01T10:03:00Z"),
        ("p3", "2026-05-01T09:58:00Z"),
    ]
    assert second.high_water_mark.of("Patient") == datetime(2026, 5, 1, 10, 3, tzinfo=UTC)


def test_a_resource_without_last_updated_is_always_sent(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    doc = patient("p1")
    del doc["meta"]
    only_patients(mock, httpx.Response(200, json=bundle([doc])))
    mark = HighWaterMark((("Patient", datetime(2026, 5, 1, tzinfo=UTC)),))
    pull = puller(time).pull(mark)
    assert [r.source_id for r in pull.records] == ["p1"]
    assert pull.high_water_mark.of("Patient") == datetime(2026, 5, 1, tzinfo=UTC)


def test_each_type_keeps_its_own_mark_when_another_fails(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    before = datetime(2026, 4, 1, tzinfo=UTC)
    mock.get(f"{BASE}/Patient").mock(return_value=httpx.Response(404))
    mock.get(f"{BASE}/ServiceRequest").mock(
        return_value=httpx.Response(
            200,
            json=bundle(
                [
                    {
                        "resourceType": "ServiceRequest",
                        "id": "s1",
                        "meta": {"lastUpdated": "2026-06-01T00:00:00Z"},
                    }
                ]
            ),
        )
    )
    mock.get(f"{BASE}/CarePlan").mock(return_value=empty())
    mark = HighWaterMark((("Patient", before), ("ServiceRequest", before)))
    pull = puller(time).pull(mark)
    assert pull.high_water_mark.of("Patient") == before
    assert pull.high_water_mark.of("ServiceRequest") == datetime(2026, 6, 1, tzinfo=UTC)
    assert pull.high_water_mark.of("CarePlan") is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Xiomara",
        '{"v": 2, "updated": [], "recent": []}',
        '{"v": 1, "updated": [["Patient", "2026-01-01"]], "recent": []}',
        '{"v": 1, "updated": [], "recent": [["Patient", "Xiomara Q", "2026-01-01T00:00:00Z"]]}',
        '{"v": 1, "updated": [["patient", "2026-01-01T00:00:00Z"]], "recent": []}',
    ],
)
def test_a_mark_this_adapter_did_not_write_is_refused_without_quoting_it(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        HighWaterMark.from_text(text)
    assert "Xiomara" not in str(refused.value)


def test_the_pull_refuses_odd_configuration() -> None:
    client = SourceClient(BASE)
    with pytest.raises(ValueError):
        FhirPull(client, BASE, page_size=0)
    with pytest.raises(ValueError):
        FhirPull(client, BASE, types=("Patient", "Patient"))
    with pytest.raises(ValueError):
        FhirPull(client, BASE, types=("patient",))
    with pytest.raises(ValueError):
        FhirPull(client, f"{BASE}?x=1")


def test_a_mark_keeps_versions_within_the_overlap_only() -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    mark = HighWaterMark(
        (("Patient", at),),
        (("Patient", "a", at - timedelta(minutes=1)), ("Patient", "b", at)),
    )
    assert HighWaterMark.from_text(copy.copy(mark).to_text()) == mark


def test_problems_are_source_problems_of_the_fhir_system(
    mock: respx.MockRouter, time: FakeTime
) -> None:
    only_patients(mock, httpx.Response(200, json=bundle([{"resourceType": "Patient"}])))
    (problem,) = puller(time).pull().problems
    assert isinstance(problem, SourceProblem)
    assert (problem.system, problem.record_type) == ("fhir", "Patient")
