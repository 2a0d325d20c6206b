"""Operations: Prometheus metrics (one registry per app, no globals), structured JSON logs with a
request id, the ASGI middleware that measures every request, and the readiness probe's runner.

Logs and metric labels never carry PHI: the route *template* is used
(``/fhir/{resource_type}/{resource_id}``), never the path, the query or a body.

Under ``gateway serve`` every worker is a process of its own: ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh private directory before the workers start, each worker
writes its samples there, and a scrape of any worker adds up every worker's (prometheus-client's
multiprocess mode). Without that variable (tests, the demo) each app counts alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, Issue
from gateway.outcomes import outcome_bytes

REQUEST_ID = re.compile(r"[A-Za-z0-9\-_.]{1,64}")
LOGGER = "gateway"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def _forget_dead_workers(directory: str) -> None:
    """Drop the live-gauge files of workers that are gone (a crashed worker's readiness must
    not count once granian has replaced it); their counters stay: totals survive respawns."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = os.path.basename(path).rsplit("_", 1)[-1].removesuffix(".db")
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir()
        if self.multiprocess is not None:
            _forget_dead_workers(self.multiprocess)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.store = Histogram(
            "gateway_store_operation_seconds",
            "Store unit-of-work latency by operation",
            ["operation"],
            registry=self.registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2),
        )

        # 1 while this worker's last readiness probe passed; across workers, the lowest.
        self.ready = Gauge(
            "gateway_ready",
            "1 when the last readiness probe passed (database, audit log, keys), else 0",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        # Label look-ups cost more than the observation; the label sets are few (route templates).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._store_children: dict[str, Any] = {}

    def observe_request(self, template: str, method: str, status: int, seconds: float) -> None:
        key = (template, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(template, method, str(status)),
                self.latency.labels(template, method),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_store(self, operation: str, seconds: float) -> None:
        child = self._store_children.get(operation)
        if child is None:
            child = self._store_children[operation] = self.store.labels(operation)
        child.observe(seconds)

    def exposition(self) -> bytes:
        """The text a scrape gets: every worker's samples added up under ``gateway serve``."""
        if self.multiprocess is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


class Readiness:
    """Runs the readiness probe (blocking database calls) off the event loop, in a daemon
    thread of its own, so that a frozen database never stalls the worker, and waits for it at
    most ``timeout`` seconds. At most one probe runs at a time: a check that arrives while one
    is running waits for that one, and a probe stuck in a frozen database holds one thread,
    not one per check. ``check`` returns None when ready, else why not (fixed text)."""

    def __init__(
        self,
        probe: Callable[[], None],
        timeout: float,
        metrics: Metrics,
        logger: logging.Logger,
    ) -> None:
        self._probe = probe
        self._timeout = timeout
        self._metrics = metrics
        self._logger = logger
        self._lock = threading.Lock()
        self._running: concurrent.futures.Future[None] | None = None

    def _start(self) -> concurrent.futures.Future[None]:
        with self._lock:
            running = self._running
            if running is not None and not running.done():
                return running
            future: concurrent.futures.Future[None] = concurrent.futures.Future()

            def run() -> None:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    self._probe()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(None)

            threading.Thread(target=run, name="gateway-readiness", daemon=True).start()
            self._running = future
            return future

    async def check(self) -> str | None:
        future = self._start()
        reason: str | None = None
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), self._timeout)
        except TimeoutError:
            reason = "the readiness probe did not finish in time"
        except GatewayError as exc:
            reason = exc.diagnostics
        except Exception as exc:
            reason = "the readiness probe failed"
            self._logger.error(
                "readiness probe failed", extra={"fields": {"error": type(exc).__name__}}
            )
        self._metrics.ready.set(0 if reason else 1)
        if reason:
            self._logger.warning("not ready", extra={"fields": {"reason": reason}})
        return reason


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: messages and tracebacks may quote data.
            doc["error"] = record.exc_info[0].__name__
        return orjson.dumps(doc).decode()


def configure_logging(level: str) -> logging.Logger:
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


class ObservabilityMiddleware:
    """Request id, latency, status and one access-log line per request (pure ASGI: no
    BaseHTTPMiddleware, which would copy every body)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, logger: logging.Logger) -> None:
        self.app = app
        self.metrics = metrics
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if REQUEST_ID.fullmatch(candidate):
                    request_id = candidate
                break
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started_response = False
        started = time.perf_counter()
        header = (b"x-request-id", request_id.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            # Swallowed here, not re-raised to the server: its traceback could quote data.
            self.logger.error(
                "unhandled error",
                extra={"fields": {"request_id": request_id, "error": type(exc).__name__}},
            )
            if not started_response:
                await send_wrapper(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/fhir+json; charset=utf-8")],
                    }
                )
                await send({"type": "http.response.body", "body": _internal_error(request_id)})
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.observe_request(template, method, status, elapsed)
            if self.logger.isEnabledFor(logging.INFO):
                self.logger.info(
                    "request",
                    extra={
                        "fields": {
                            "request_id": request_id,
                            "method": method,
                            "route": template,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 3),
                        }
                    },
                )


def _internal_error(request_id: str) -> bytes:
    return outcome_bytes(
        [Issue("exception", f"internal error; quote request id {request_id} to support")]
    )
