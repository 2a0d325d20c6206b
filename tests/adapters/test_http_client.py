"""The shared outbound client (``adapters/_http.py``): what it retries and how long it waits,
what it refuses, how much it reads, and what its errors and logs never say. Sleep, clock and
random draws are injected: every wait is asserted, none is taken."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
import respx

from adapters._http import (
    AsyncSourceClient,
    BearerAuth,
    HttpPolicy,
    SourceClient,
    SourceRefused,
    SourceResponseTooLarge,
    SourceUnavailable,
)

BASE = "https://riverside-legal.legalserver.org"
API_KEY = "4f1c2a9e-report-key-0d7b"
TOKEN = "pat-3b8e1f0c-secret-token"
START = 1_800_000_000.0


class FakeTime:
    """A clock that moves only when slept on, and remembers every sleep."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Ceiling(random.Random):
    """Full jitter draws uniformly from [0, cap]; this one always draws the cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


def client(time: FakeTime, **policy: object) -> SourceClient:
    return SourceClient(
        BASE,
        policy=HttpPolicy(**policy),  # type: ignore[arg-type]
        auth=BearerAuth(TOKEN),
        sleep=time.sleep,
        clock=time.clock,
        rng=Ceiling(),
    )


def test_503_is_retried_with_exponential_backoff_then_succeeds() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        route = mock.get("/api/v2/matters").mock(
            side_effect=[httpx.Response(503), httpx.Response(502), httpx.Response(200, json={})]
        )
        answer = client(time, backoff_base=0.5).get("/api/v2/matters")
    assert answer.status == 200
    assert route.call_count == 3
    assert time.sleeps == [0.5, 1.0]


def test_backoff_is_full_jitter_between_zero_and_the_capped_exponential() -> None:
    time = FakeTime()
    source = SourceClient(
        BASE,
        policy=HttpPolicy(max_attempts=6, backoff_base=1.0, backoff_max=4.0),
        sleep=time.sleep,
        clock=time.clock,
        rng=random.Random(20261201),
    )
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(return_value=httpx.Response(504))
        with pytest.raises(SourceUnavailable):
            source.get("/api/v2/matters")
    caps = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(time.sleeps) == len(caps)
    assert all(0.0 <= slept <= cap for slept, cap in zip(time.sleeps, caps, strict=True))
    assert len(set(time.sleeps)) == len(caps)  # drawn, not fixed


def test_429_waits_the_retry_after_seconds() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": "7"}),
                httpx.Response(200, json={}),
            ]
        )
        client(time).get("/api/v2/matters")
    assert time.sleeps == [7.0]


def test_429_waits_until_a_retry_after_http_date() -> None:
    time = FakeTime()
    when = format_datetime(datetime.fromtimestamp(START + 42, tz=UTC), usegmt=True)
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": when}),
                httpx.Response(200, json={}),
            ]
        )
        client(time).get("/api/v2/matters")
    assert time.sleeps == [42.0]


def test_429_waits_until_legalservers_rate_limit_reset() -> None:
    time = FakeTime()
    headers = {"x-rate-limit-limit": "200", "x-rate-limit-remaining": "0"}
    headers["x-rate-limit-reset"] = str(int(START + 25))
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(
            side_effect=[httpx.Response(429, headers=headers), httpx.Response(200, json={})]
        )
        client(time).get("/api/v2/matters")
    assert time.sleeps == [25.0]


def test_a_servers_wait_is_capped_by_max_wait() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(
            side_effect=[
                httpx.Response(503, headers={"Retry-After": "86400"}),
                httpx.Response(200, json={}),
            ]
        )
        client(time, max_wait=60.0).get("/api/v2/matters")
    assert time.sleeps == [60.0]


def test_an_unreadable_retry_after_falls_back_to_backoff() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": "soon, maybe"}),
                httpx.Response(200, json={}),
            ]
        )
        client(time, backoff_base=2.0).get("/api/v2/matters")
    assert time.sleeps == [2.0]


def test_no_requests_remaining_pauses_the_next_request_until_the_reset() -> None:
    time = FakeTime()
    spent = {"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(START + 30))}
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(
            side_effect=[httpx.Response(200, json={}, headers=spent), httpx.Response(200, json={})]
        )
        source = client(time)
        source.get("/api/v2/matters")
        assert time.sleeps == []
        source.get("/api/v2/matters")
    assert time.sleeps == [30.0]


def test_exhausted_retries_raise_unavailable_naming_status_and_path_but_no_secret() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        route = mock.get("/modules/report/api_export.php").mock(
            return_value=httpx.Response(503, text=f"maintenance; your key {API_KEY}")
        )
        with pytest.raises(SourceUnavailable) as caught:
            client(time, max_attempts=4).get(
                "/modules/report/api_export.php", params={"load": 12, "api_key": API_KEY}
            )
    failure = caught.value
    assert route.call_count == 4
    assert len(time.sleeps) == 3
    assert (failure.status, failure.attempts, failure.path) == (
        503,
        4,
        "/modules/report/api_export.php",
    )
    text = f"{failure} {failure!r} {failure.args}"
    assert "503" in text
    assert "/modules/report/api_export.php" in text
    assert API_KEY not in text
    assert TOKEN not in text
    assert "maintenance" not in text
    assert failure.__cause__ is None
    assert failure.__suppress_context__


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_4xx_other_than_429_is_refused_at_once(status: int) -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        route = mock.get("/api/v2/matters").mock(
            return_value=httpx.Response(status, json={"error_message": "User Jane Doe unknown"})
        )
        with pytest.raises(SourceRefused) as caught:
            client(time).get("/api/v2/matters", params={"first": "Jane"})
    assert route.call_count == 1
    assert time.sleeps == []
    assert caught.value.status == status
    assert "Jane" not in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_a_redirect_is_not_followed() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(
            return_value=httpx.Response(302, headers={"Location": "https://elsewhere.example/"})
        )
        with pytest.raises(SourceRefused) as caught:
            client(time).get("/api/v2/matters")
    assert caught.value.status == 302
    assert "elsewhere" not in str(caught.value)


def test_a_500_is_unavailable_and_not_retried() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        route = mock.get("/api/v2/matters").mock(return_value=httpx.Response(500))
        with pytest.raises(SourceUnavailable):
            client(time).get("/api/v2/matters")
    assert route.call_count == 1


def test_connect_errors_and_read_timeouts_are_retried_for_a_get() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        route = mock.get("/api/v2/matters").mock(
            side_effect=[
                httpx.ConnectError("connection refused"),
                httpx.ReadTimeout("timed out"),
                httpx.Response(200, json={}),
            ]
        )
        assert client(time).get("/api/v2/matters").status == 200
    assert route.call_count == 3


def test_a_read_timeout_on_a_post_is_not_retried_but_a_connect_error_is() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        timed_out = mock.post("/notify").mock(side_effect=httpx.ReadTimeout("timed out"))
        with pytest.raises(SourceUnavailable) as caught:
            client(time).request("POST", "/notify", json={"id": 1})
        assert timed_out.call_count == 1
        assert caught.value.cause == "ReadTimeout"
        refused = mock.post("/notify-2").mock(
            side_effect=[httpx.ConnectError("refused"), httpx.Response(202)]
        )
        assert client(time).request("POST", "/notify-2", json={"id": 1}).status == 202
        assert refused.call_count == 2


def test_a_post_marked_idempotent_is_retried_on_503() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        route = mock.post("/notify").mock(side_effect=[httpx.Response(503), httpx.Response(200)])
        client(time).request("POST", "/notify", json={}, idempotent=True)
    assert route.call_count == 2


def test_a_body_declared_larger_than_the_limit_is_refused_unread() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(return_value=httpx.Response(200, content=b"x" * 2048))
        with pytest.raises(SourceResponseTooLarge) as caught:
            client(time, max_response_bytes=1024).get("/api/v2/matters")
    assert "1024" in str(caught.value)


def test_a_streamed_body_is_cut_off_past_the_limit() -> None:
    time = FakeTime()
    chunks_sent: list[int] = []

    def endless() -> Iterator[bytes]:
        for index in range(1000):
            chunks_sent.append(index)
            yield b"y" * 512

    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(return_value=httpx.Response(200, content=endless()))
        with pytest.raises(SourceResponseTooLarge):
            client(time, max_response_bytes=4096).get("/api/v2/matters")
    assert len(chunks_sent) < 20  # stopped reading, did not buffer the lot


def test_a_body_within_the_limit_is_returned_whole() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(return_value=httpx.Response(200, content=b"z" * 1024))
        assert client(time, max_response_bytes=1024).get("/api/v2/matters").content == b"z" * 1024


def test_requests_carry_the_user_agent_the_token_and_explicit_timeouts() -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock:
        route = mock.get("/api/v2/matters").mock(return_value=httpx.Response(200, json={}))
        client(time, connect_timeout=3.0, read_timeout=20.0).get("/api/v2/matters")
    sent = route.calls.last.request
    assert sent.headers["User-Agent"].startswith("care-gateway/")
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.extensions["timeout"] == {"connect": 3.0, "read": 20.0, "write": 30.0, "pool": 5.0}


def test_httpx_request_log_line_hides_the_query_string(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    with respx.mock(base_url=BASE) as mock, caplog.at_level(logging.INFO, logger="httpx"):
        mock.get("/modules/report/api_export.php").mock(return_value=httpx.Response(200, json=[]))
        client(time).get("/modules/report/api_export.php", params={"load": 3, "api_key": API_KEY})
    lines = [record.getMessage() for record in caplog.records if record.name == "httpx"]
    assert any("/modules/report/api_export.php" in line for line in lines)
    assert all(API_KEY not in line for line in lines)


def test_the_bearer_token_is_not_in_the_auths_repr() -> None:
    assert TOKEN not in repr(BearerAuth(TOKEN))


@pytest.mark.parametrize(
    "base",
    ["http://riverside-legal.legalserver.org", "https://user:pw@x.legalserver.org", "ftp://x"],
)
def test_plain_http_off_loopback_credentials_in_the_url_and_other_schemes_are_refused(
    base: str,
) -> None:
    with pytest.raises(ValueError):
        SourceClient(base)


def test_the_async_twin_retries_and_waits_the_same_way() -> None:
    time = FakeTime()

    async def run() -> int:
        source = AsyncSourceClient(BASE, sleep=time.async_sleep, clock=time.clock, rng=Ceiling())
        async with source:
            return (await source.get("/api/v2/matters")).status

    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/matters").mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": "3"}),
                httpx.Response(503),
                httpx.Response(200, json={}),
            ]
        )
        assert asyncio.run(run()) == 200
    assert time.sleeps == [3.0, 1.0]


def test_the_async_twin_refuses_an_oversize_body_and_a_401() -> None:
    time = FakeTime()

    async def fetch(path: str) -> None:
        source = AsyncSourceClient(
            BASE,
            policy=HttpPolicy(max_response_bytes=100),
            sleep=time.async_sleep,
            clock=time.clock,
        )
        async with source:
            await source.get(path)

    with respx.mock(base_url=BASE) as mock:
        mock.get("/big").mock(return_value=httpx.Response(200, content=b"a" * 101))
        mock.get("/denied").mock(return_value=httpx.Response(401))
        with pytest.raises(SourceResponseTooLarge):
            asyncio.run(fetch("/big"))
        with pytest.raises(SourceRefused):
            asyncio.run(fetch("/denied"))
    assert time.sleeps == []
