"""Operations: Prometheus metrics (one registry per app, no globals), structured JSON logs with a
request id, and the ASGI middleware that measures every request.

Logs never carry PHI: the route *template* is logged (``/fhir/{resource_type}/{resource_id}``),
never the path, the query or a body.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import Issue
from gateway.outcomes import outcome_bytes

REQUEST_ID = re.compile(r"[A-Za-z0-9\-_.]{1,64}")
LOGGER = "gateway"


class Metrics:
    def __init__(self) -> None:
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
