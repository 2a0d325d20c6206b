"""The adapter against the fake LegalServer over real loopback HTTP: a site that pages, runs out
of its rate limit and fails now and then still yields every matter exactly once. The fake's rate
window and the client's sleep share one fake clock, so waits are asserted, not taken."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from adapters.legalserver import LegalServerCoreAPI, LegalServerReports, legalserver_client
from gateway.synth.legalserver import Failures, matters, serve_fake_legalserver
from tests.adapters.test_http_client import FakeTime

pytestmark = pytest.mark.server  # a real HTTP server, on loopback, in a thread

TOKEN = "pat-integration-6a2f"
REPORT_KEY = "report-key-integration-91c3"


def test_a_rate_limited_flaky_site_yields_every_matter_exactly_once() -> None:
    site = matters(47, seed=20261201)
    time = FakeTime()
    failing = Failures(unavailable_on=frozenset({2, 5, 6}))
    with serve_fake_legalserver(
        site, token=TOKEN, rate_limit=3, window_seconds=60, fail=failing, clock=time.clock
    ) as base:
        source = legalserver_client(base, token=TOKEN, sleep=time.sleep, clock=time.clock)
        pull = LegalServerCoreAPI(source, page_size=10).pull()
    assert pull.problems == []
    counts = Counter(record.source_id for record in pull.records)
    assert counts == Counter(m["matter_uuid"] for m in site)
    assert [r.fields["case_id"] for r in pull.records] == [m["case_id"] for m in site]
    # The window of 3 ran out: the client waited for the reset, whole windows of 60 s.
    assert sum(1 for s in time.sleeps if s >= 1) >= 2
    assert all(s <= 60 for s in time.sleeps)
    assert pull.high_water_mark.updated_at is not None


def test_only_what_changed_comes_back_on_the_next_pull() -> None:
    site = matters(12, seed=7)
    time = FakeTime()
    with serve_fake_legalserver(site, token=TOKEN, clock=time.clock) as base:
        source = legalserver_client(base, token=TOKEN, sleep=time.sleep, clock=time.clock)
        adapter = LegalServerCoreAPI(source, page_size=5, updated_since_param="updated_at")
        first = adapter.pull()
        assert len(first.records) == 12
        assert adapter.pull(first.high_water_mark).records == []
        newest = first.high_water_mark.updated_at
        assert newest is not None
        site[3]["updated_at"] = (newest + timedelta(hours=2)).isoformat()
        again = adapter.pull(first.high_water_mark)
    assert [r.source_id for r in again.records] == [site[3]["matter_uuid"]]


def test_a_malformed_page_is_one_fatal_problem_and_the_rest_is_pulled() -> None:
    site = matters(30, seed=3)
    time = FakeTime()
    with serve_fake_legalserver(
        site, token=TOKEN, fail=Failures(malformed_pages=frozenset({2})), clock=time.clock
    ) as base:
        source = legalserver_client(base, token=TOKEN, sleep=time.sleep, clock=time.clock)
        pull = LegalServerCoreAPI(source, page_size=10).pull()
    [problem] = pull.problems
    assert problem.fatal
    assert problem.origin.locator == "page 2"
    assert [r.fields["case_id"] for r in pull.records] == [
        m["case_id"] for m in site[:10] + site[20:]
    ]
    assert pull.high_water_mark.updated_at is None


def test_a_wrong_token_is_refused_once_and_never_shown() -> None:
    time = FakeTime()
    with serve_fake_legalserver(matters(3, seed=1), token=TOKEN, clock=time.clock) as base:
        source = legalserver_client(
            base, token="pat-wrong-0000", sleep=time.sleep, clock=time.clock
        )
        pull = LegalServerCoreAPI(source).pull()
    [problem] = pull.items
    assert "401" in problem.reason  # type: ignore[union-attr]
    assert "pat-wrong-0000" not in repr(problem)
    assert time.sleeps == []


def test_http_basic_and_the_report_export_over_http() -> None:
    site = matters(9, seed=11)
    time = FakeTime()
    with serve_fake_legalserver(
        site,
        token=TOKEN,
        basic=("api_gateway", "correct horse battery"),
        report_keys={41: REPORT_KEY},
        clock=time.clock,
    ) as base:
        source = legalserver_client(
            base,
            username="api_gateway",
            password="correct horse battery",
            sleep=time.sleep,
            clock=time.clock,
        )
        core = LegalServerCoreAPI(source).pull()
        report = LegalServerReports(source, report=41, api_key=REPORT_KEY).pull()
        refused = LegalServerReports(source, report=41, api_key="not-the-key").pull()
    assert len(core.records) == 9
    assert [r.source_id for r in report.records] == [m["matter_uuid"] for m in site]
    for record in report.records:
        assert isinstance(record.fields["case_id"], int)
        assert record.fields["mobile_phone_safe"] in (True, False)
        if not record.fields["mobile_phone_safe"]:
            assert "mobile_phone" not in record.fields
    [problem] = refused.items
    assert "403" in problem.reason  # type: ignore[union-attr]
    assert "not-the-key" not in repr(problem)


def test_no_unsafe_contact_leaves_the_adapter_over_http() -> None:
    site = matters(40, seed=99)
    time = FakeTime()
    with serve_fake_legalserver(site, token=TOKEN, clock=time.clock) as base:
        source = legalserver_client(base, token=TOKEN, sleep=time.sleep, clock=time.clock)
        pull = LegalServerCoreAPI(source, page_size=40).pull()
    by_uuid = {m["matter_uuid"]: m for m in site}
    unsafe_seen = 0
    for record in pull.records:
        given = by_uuid[record.source_id]
        for phone in ("mobile", "home", "work"):
            number = given.get(f"{phone}_phone")
            if number and given.get(f"{phone}_phone_safe") is not True:
                unsafe_seen += 1
                assert f"{phone}_phone" not in record.fields
                assert number.encode() not in record.origin.raw or any(
                    # the same fictional number may also be another, safe, phone of hers
                    given.get(f"{other}_phone") == number and given.get(f"{other}_phone_safe")
                    for other in ("mobile", "home", "work")
                )
        if given.get("safe_address") is not True:
            assert "client_address_home" not in record.fields
            assert given["client_address_home"]["street"].encode() not in record.origin.raw
    assert unsafe_seen > 10  # the fixture really mixes safe and unsafe
