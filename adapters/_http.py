"""The one outbound HTTP client every HTTP adapter uses (and, later, the push sender): httpx with
explicit timeouts, a bounded response body, no redirects, one User-Agent, and tenacity retries.

Retries: exponential backoff with full jitter (a uniform draw between 0 and
``backoff_base * 2 ** (attempt - 1)``, capped at ``backoff_max``) on 429, 502, 503 and 504 and on
transport failures, for idempotent requests only; a failure that happened before the request left
(connection refused, connect or pool timeout) is retried whatever the method, since nothing was
sent. A server's own wait (``Retry-After`` in seconds or as an HTTP date, else the epoch time in
``x-rate-limit-reset``) replaces the backoff, capped at ``max_wait``. When an answer says no
requests remain in the window (``x-rate-limit-remaining: 0``), the next request waits for the
reset first. Sleep, clock and random draws are injected, so tests assert the waits without
waiting.

SourceError                    the source could not be read
├── SourceUnavailable          transport failure, timeout, 429 or 5xx (after the retries it earns)
├── SourceRefused              the source said no: 4xx other than 429, or a redirect (not followed)
└── SourceResponseTooLarge     the body passed ``max_response_bytes`` (refused while streaming)

Messages carry the method, the URL path, the status code and the number of attempts: never the
query string (the LegalServer Reports API takes its ``api_key`` there), a header, a credential or a
byte of the response body. httpx's own request log line is rewritten to drop the query string.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final, Literal

import httpx
import tenacity

RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

# Nothing left the machine: retrying cannot apply a request twice.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The request may have reached the source: retried only when repeating it is harmless.
_MAYBE_SENT: Final = (
    httpx.ReadTimeout,
    httpx.ReadError,
    httpx.WriteTimeout,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
_PATH_SHOWN: Final = 200
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})

Retry = Literal["never", "idempotent", "always"]


class SourceError(Exception):
    """A source could not be read. ``method``, ``path`` (the URL path, never its query), ``status``
    (``None`` when no answer came) and ``attempts`` are safe to log; so is the message."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        path: str,
        status: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.path = path
        self.status = status
        self.attempts = attempts


class SourceUnavailable(SourceError):
    """No usable answer: a transport failure, a timeout, 429, or a 5xx. ``cause`` names the
    failure (``ConnectError``, ``ReadTimeout``, ``status 503``) without its text."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        path: str,
        status: int | None = None,
        attempts: int = 1,
        cause: str = "",
        retry: Retry = "never",
        server_wait: float | None = None,
    ) -> None:
        super().__init__(message, method=method, path=path, status=status, attempts=attempts)
        self.cause = cause
        self.retry: Retry = retry
        self.server_wait = server_wait


class SourceRefused(SourceError):
    """The source answered no (401, 403, 404, 400, ...) or pointed elsewhere (3xx): asking again
    would get the same answer, so it is never retried."""


class SourceResponseTooLarge(SourceError):
    """The answer's body passed the limit; reading stopped there."""


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """Timeouts (seconds), the body limit, the retry schedule and the rate-limit header names."""

    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    pool_timeout: float = 5.0
    max_response_bytes: int = 32 * 1024 * 1024
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_wait: float = 120.0
    user_agent: str = "care-gateway/0.1 (source adapter)"
    rate_limit_remaining_header: str = "x-rate-limit-remaining"
    rate_limit_reset_header: str = "x-rate-limit-reset"

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_response_bytes < 1:
            raise ValueError("max_response_bytes must be positive")
        for name in ("connect_timeout", "read_timeout", "write_timeout", "pool_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect_timeout,
            read=self.read_timeout,
            write=self.write_timeout,
            pool=self.pool_timeout,
        )


@dataclass(frozen=True, slots=True)
class SourceResponse:
    """A successful (2xx) answer, read in full within the limit."""

    status: int
    headers: httpx.Headers
    content: bytes
    path: str


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>``; its repr shows no token."""

    def __init__(self, token: str) -> None:
        if not token or any(c in token for c in "\r\n"):
            raise ValueError("a bearer token must be a non-empty single line")
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(<hidden>)"


class _RedactQuery(logging.Filter):
    """httpx logs every request's full URL at INFO; a query string can hold a key."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(
                _redacted(a) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


def _redacted(url: httpx.URL) -> str:
    shown = str(url.copy_with(query=None, fragment=None, userinfo=b""))
    return f"{shown}?<query hidden>" if url.query else shown


def _install_log_redaction() -> None:
    target = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactQuery) for f in target.filters):
        target.addFilter(_RedactQuery())


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or ``None``
    when it is neither."""
    value = value.strip()
    if value.isdigit() and len(value) <= 12:
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # an HTTP date is GMT
    return max(0.0, when.timestamp() - now)


def parse_reset(value: str, now: float) -> float | None:
    """Seconds until an epoch-time reset (LegalServer's ``x-rate-limit-reset``); ``None`` when it
    is not a number or already past."""
    try:
        at = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(at) or at <= now:
        return None
    return at - now


@dataclass
class _Attempts:
    count: int = 0


class _Core:
    """What the sync and async clients share: judging answers, the waits, the rate-limit pause."""

    def __init__(
        self,
        base_url: str,
        policy: HttpPolicy,
        clock: Callable[[], float],
        rng: random.Random | None,
    ) -> None:
        _install_log_redaction()
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("base_url must be an absolute http(s) URL")
        if url.query or url.userinfo:
            raise ValueError("base_url must carry no query and no credentials")
        if url.scheme == "http" and url.host not in _LOOPBACK:
            # Tokens and survivors' records never cross a network in clear.
            raise ValueError("plain http is allowed to loopback only; use https")
        self.policy = policy
        self._base_path = url.path.rstrip("/")
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._not_before = 0.0

    def _client_options(self, auth: httpx.Auth | None, headers: Mapping[str, str] | None) -> Any:
        merged = {"User-Agent": self.policy.user_agent, "Accept": "application/json"}
        merged.update(headers or {})
        return {
            "auth": auth,
            "headers": merged,
            "timeout": self.policy.timeout(),
            "follow_redirects": False,
        }

    def shown_path(self, path: str) -> str:
        bare = path.split("?", 1)[0].split("#", 1)[0]
        full = f"{self._base_path}/{bare.lstrip('/')}"
        return full[:_PATH_SHOWN]

    def retry_policy(self, method: str, idempotent: bool | None) -> Callable[[BaseException], bool]:
        repeatable = method in IDEMPOTENT_METHODS if idempotent is None else idempotent

        def should_retry(exc: BaseException) -> bool:
            if not isinstance(exc, SourceUnavailable):
                return False
            return exc.retry == "always" or (exc.retry == "idempotent" and repeatable)

        return should_retry

    def wait(self, state: tenacity.RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failure, SourceUnavailable) and failure.server_wait is not None:
            return min(failure.server_wait, self.policy.max_wait)
        cap = min(
            self.policy.backoff_max, self.policy.backoff_base * 2 ** (state.attempt_number - 1)
        )
        return self._rng.uniform(0.0, cap)

    def server_wait(self, headers: httpx.Headers) -> float | None:
        now = self._clock()
        retry_after = headers.get("retry-after")
        if retry_after is not None:
            seconds = parse_retry_after(retry_after, now)
            if seconds is not None:
                return seconds
        reset = headers.get(self.policy.rate_limit_reset_header)
        return parse_reset(reset, now) if reset is not None else None

    def judge(self, method: str, path: str, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        shown = self.shown_path(path)
        if status in RETRYABLE_STATUSES:
            raise SourceUnavailable(
                f"{method} {shown} answered {status}",
                method=method,
                path=shown,
                status=status,
                cause=f"status {status}",
                retry="idempotent",
                server_wait=self.server_wait(response.headers),
            )
        if status >= 500:
            raise SourceUnavailable(
                f"{method} {shown} answered {status}",
                method=method,
                path=shown,
                status=status,
                cause=f"status {status}",
            )
        note = " (a redirect, not followed)" if 300 <= status < 400 else ""
        raise SourceRefused(
            f"{method} {shown} answered {status}{note}", method=method, path=shown, status=status
        )

    def transport_failure(self, method: str, path: str, exc: httpx.HTTPError) -> SourceUnavailable:
        shown = self.shown_path(path)
        retry: Retry = "never"
        if isinstance(exc, _NOT_SENT):
            retry = "always"
        elif isinstance(exc, _MAYBE_SENT):
            retry = "idempotent"
        name = type(exc).__name__
        return SourceUnavailable(
            f"{method} {shown} failed: {name}", method=method, path=shown, cause=name, retry=retry
        )

    def check_declared_length(self, method: str, path: str, response: httpx.Response) -> None:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.policy.max_response_bytes:
            raise self.too_large(method, path)

    def too_large(self, method: str, path: str) -> SourceResponseTooLarge:
        shown = self.shown_path(path)
        return SourceResponseTooLarge(
            f"{method} {shown} answered more than {self.policy.max_response_bytes} bytes",
            method=method,
            path=shown,
            status=200,
        )

    def pause_needed(self) -> float:
        return max(0.0, self._not_before - self._clock())

    def note_rate_limit(self, headers: httpx.Headers) -> None:
        remaining = headers.get(self.policy.rate_limit_remaining_header, "").strip()
        if remaining.isdigit() and int(remaining) == 0:
            reset = headers.get(self.policy.rate_limit_reset_header)
            seconds = parse_reset(reset, self._clock()) if reset is not None else None
            if seconds is not None:
                self._not_before = self._clock() + min(seconds, self.policy.max_wait)

    def exhausted(self, failure: SourceUnavailable, attempts: int) -> SourceUnavailable:
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        return SourceUnavailable(
            f"{failure.message}{tried}",
            method=failure.method,
            path=failure.path,
            status=failure.status,
            attempts=attempts,
            cause=failure.cause,
        )


class SourceClient(_Core):
    """The synchronous client. ``transport`` (an ``httpx.MockTransport``, respx) and ``sleep``,
    ``clock`` and ``rng`` are for tests; adapters pass ``auth`` and nothing else."""

    def __init__(
        self,
        base_url: str,
        *,
        policy: HttpPolicy | None = None,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(base_url, policy or HttpPolicy(), clock, rng)
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=base_url, transport=transport, **self._client_options(auth, headers)
        )

    def get(self, path: str, *, params: Mapping[str, Any] | None = None) -> SourceResponse:
        return self.request("GET", path, params=params)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> SourceResponse:
        """One request with the retries it earns. ``idempotent`` overrides the method's default
        (a POST with an idempotency key may be retried)."""
        method = method.upper()
        attempts = _Attempts()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.policy.max_attempts),
            wait=self.wait,
            retry=tenacity.retry_if_exception(self.retry_policy(method, idempotent)),
            sleep=self._sleep,
            reraise=True,
        )
        send = {"params": params, "json": json, "content": content, "headers": headers}
        try:
            return retrying(self._attempt, method, path, send, attempts)
        except SourceUnavailable as failure:
            raise self.exhausted(failure, attempts.count) from None

    def _attempt(
        self, method: str, path: str, send: dict[str, Any], attempts: _Attempts
    ) -> SourceResponse:
        attempts.count += 1
        pause = self.pause_needed()
        if pause > 0:
            self._sleep(pause)
        try:
            with self._client.stream(method, path, **send) as response:
                self.judge(method, path, response)
                self.check_declared_length(method, path, response)
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.policy.max_response_bytes:
                        raise self.too_large(method, path)
        except httpx.HTTPError as exc:
            raise self.transport_failure(method, path, exc) from None
        self.note_rate_limit(response.headers)
        return SourceResponse(
            response.status_code, response.headers, bytes(body), self.shown_path(path)
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SourceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncSourceClient(_Core):
    """The asynchronous twin (the push sender): the same policy, errors and waits."""

    def __init__(
        self,
        base_url: str,
        *,
        policy: HttpPolicy | None = None,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(base_url, policy or HttpPolicy(), clock, rng)
        self._sleep = sleep
        self._client = httpx.AsyncClient(
            base_url=base_url, transport=transport, **self._client_options(auth, headers)
        )

    async def get(self, path: str, *, params: Mapping[str, Any] | None = None) -> SourceResponse:
        return await self.request("GET", path, params=params)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> SourceResponse:
        method = method.upper()
        attempts = _Attempts()
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.policy.max_attempts),
            wait=self.wait,
            retry=tenacity.retry_if_exception(self.retry_policy(method, idempotent)),
            sleep=self._sleep,
            reraise=True,
        )
        send = {"params": params, "json": json, "content": content, "headers": headers}
        try:
            response: SourceResponse = await retrying(self._attempt, method, path, send, attempts)
        except SourceUnavailable as failure:
            raise self.exhausted(failure, attempts.count) from None
        return response

    async def _attempt(
        self, method: str, path: str, send: dict[str, Any], attempts: _Attempts
    ) -> SourceResponse:
        attempts.count += 1
        pause = self.pause_needed()
        if pause > 0:
            await self._sleep(pause)
        try:
            async with self._client.stream(method, path, **send) as response:
                self.judge(method, path, response)
                self.check_declared_length(method, path, response)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.policy.max_response_bytes:
                        raise self.too_large(method, path)
        except httpx.HTTPError as exc:
            raise self.transport_failure(method, path, exc) from None
        self.note_rate_limit(response.headers)
        return SourceResponse(
            response.status_code, response.headers, bytes(body), self.shown_path(path)
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncSourceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRYABLE_STATUSES",
    "AsyncSourceClient",
    "BearerAuth",
    "HttpPolicy",
    "SourceClient",
    "SourceError",
    "SourceRefused",
    "SourceResponse",
    "SourceResponseTooLarge",
    "SourceUnavailable",
    "parse_reset",
    "parse_retry_after",
]
