"""Logs and metrics: structured, with a request id, and never a survivor's data."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.app import create_app, raw_store
from gateway.audit.trail import MemoryAuditLog
from gateway.clock import FrozenClock
from gateway.observability import LOGGER, JsonFormatter
from gateway.store.memory import MemoryStore
from gateway.store.sql import SqlStore
from tests.disclose.test_rest import post
from tests.support.network import BASE, gateway_settings
from tests.support.records import patient


@pytest.fixture
def captured_logs(client: TestClient) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_access_logs_are_json_with_route_templates_and_no_phi(
    client: TestClient, captured_logs: io.StringIO
) -> None:
    created = post(client, "/fhir/Patient", patient("Álvarez", "María", mrn="RSH-000412")).json()
    client.get(f"/fhir/Patient/{created['id']}")
    client.get("/fhir/Patient?family=alvarez&identifier=RSH-000412")
    client.post("/fhir/Patient", content=b'{"resourceType":"Patient","birthDate":"1994-03-17x"}',
                headers={"Content-Type": "application/fhir+json"})  # fmt: skip
    lines = [orjson.loads(line) for line in captured_logs.getvalue().splitlines()]
    assert len(lines) == 4
    text = captured_logs.getvalue()
    for secret in ("Álvarez", "alvarez", "RSH-000412", created["id"], "1994-03-17"):
        assert secret not in text
    assert {line["route"] for line in lines} == {
        "/fhir/{resource_type}",
        "/fhir/{resource_type}/{resource_id}",
    }
    assert all(len(line["request_id"]) == 32 for line in lines)
    assert [line["status"] for line in lines] == [201, 200, 200, 422]


def test_an_unexpected_error_is_a_500_outcome_without_a_trace(
    client: TestClient, captured_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = raw_store(client.app)  # type: ignore[arg-type]

    def explode(*_args: object, **_kw: object) -> None:
        raise RuntimeError("secret detail: María Álvarez, 12 Elm Street")

    monkeypatch.setattr(store, "locate", explode)
    response = client.get("/fhir/Patient/abc")
    assert response.status_code == 500
    doc = response.json()
    assert doc["resourceType"] == "OperationOutcome"
    assert response.headers["x-request-id"] in doc["issue"][0]["diagnostics"]
    assert "Elm" not in response.text
    assert "Elm" not in captured_logs.getvalue()
    assert "RuntimeError" in captured_logs.getvalue()


# -- request ids --------------------------------------------------------------------------------


def test_a_well_formed_client_request_id_is_kept_and_logged(
    client: TestClient, captured_logs: io.StringIO
) -> None:
    response = client.get("/healthz", headers={"X-Request-Id": "edge-7f3a.b_c-01"})
    assert response.headers["x-request-id"] == "edge-7f3a.b_c-01"
    assert orjson.loads(captured_logs.getvalue())["request_id"] == "edge-7f3a.b_c-01"


@pytest.mark.parametrize(
    "malformed",
    [
        "a" * 65,  # longer than 64
        "María Álvarez",  # a name, spaces and non-ASCII
        "id;drop table",
        "<script>x</script>",
        "",
    ],
)
def test_a_malformed_request_id_is_replaced_by_a_fresh_one_and_never_logged(
    client: TestClient, captured_logs: io.StringIO, malformed: str
) -> None:
    response = client.get("/healthz", headers={"X-Request-Id": malformed.encode()})
    fresh = response.headers["x-request-id"]
    assert fresh != malformed
    assert len(fresh) == 32
    assert int(fresh, 16) >= 0  # hex
    logged = orjson.loads(captured_logs.getvalue())
    assert logged["request_id"] == fresh
    if malformed:
        assert malformed[1:9] not in captured_logs.getvalue()
        assert "lvarez" not in captured_logs.getvalue()


# -- metrics ------------------------------------------------------------------------------------

TOKEN = "metrics-token-0123456789abcdef"


def _app_client(
    tmp_path: Path, sql_store: SqlStore, clock: FrozenClock, **overrides: Any
) -> TestClient:
    settings = gateway_settings(tmp_path, **overrides)
    return TestClient(create_app(settings, store=sql_store, clock=clock), base_url=BASE)


def test_metrics_outside_the_demo_need_the_metrics_bearer_token(
    tmp_path: Path, sql_store: SqlStore, clock: FrozenClock
) -> None:
    with _app_client(tmp_path, sql_store, clock, metrics_token=TOKEN) as c:
        c.get("/fhir/Patient/abc")
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-0123456789abcdef"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
        ):
            refused = c.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.json()["resourceType"] == "OperationOutcome"
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in refused.text
        scraped = c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scraped.status_code == 200
    assert (
        'gateway_http_requests_total{method="GET",route="/fhir/{resource_type}/{resource_id}",'
        'status="401"} 1.0' in scraped.text
    )
    assert "gateway_http_request_duration_seconds_bucket" in scraped.text


def test_metrics_outside_the_demo_without_a_token_are_refused(
    tmp_path: Path, sql_store: SqlStore, clock: FrozenClock
) -> None:
    with _app_client(tmp_path, sql_store, clock) as c:
        refused = c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 403
    assert "GATEWAY_METRICS_TOKEN" in refused.json()["issue"][0]["diagnostics"]


def test_metrics_in_the_demo_are_open_and_labelled_by_route_template_never_by_path(
    tmp_path: Path, sql_store: SqlStore, clock: FrozenClock
) -> None:
    with _app_client(tmp_path, sql_store, clock, demo=True) as c:
        c.get("/fhir/Patient/RSH-000412")
        c.get("/fhir/Patient?family=alvarez")
        c.get("/no/such/path/Alvarez")
        text = c.get("/metrics").text
    assert 'route="/fhir/{resource_type}/{resource_id}"' in text
    assert 'route="unmatched"' in text
    for secret in ("RSH-000412", "alvarez", "Alvarez"):
        assert secret not in text


# -- readiness and liveness ---------------------------------------------------------------------


def test_readyz_probe_writes_no_audit_event(client: TestClient, sql_store: SqlStore) -> None:
    for _ in range(3):
        assert client.get("/readyz").status_code == 200
    with sql_store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == 0
    created = post(client, "/fhir/Patient", patient("Álvarez", "María", mrn="RSH-000412"))
    assert created.status_code == 201
    with sql_store.engine.connect() as conn:  # the chain starts at seq 1 as if never probed
        assert conn.execute(text("SELECT min(seq) FROM audit_log")).scalar_one() == 1


def test_readyz_is_503_when_the_audit_log_cannot_be_written(
    tmp_path: Path, clock: FrozenClock
) -> None:
    settings = gateway_settings(tmp_path, demo=True)
    failing = create_app(settings, store=MemoryStore(clock), audit=MemoryAuditLog(failing=True))
    with TestClient(failing, base_url=BASE) as c:
        assert c.get("/healthz").status_code == 200  # alive, though not ready
        response = c.get("/readyz")
        assert "gateway_ready 0.0" in c.get("/metrics").text
    assert response.status_code == 503
    assert response.json()["issue"][0]["diagnostics"] == "the audit log cannot be written"
    working = create_app(settings, store=MemoryStore(clock), audit=MemoryAuditLog())
    with TestClient(working, base_url=BASE) as c:
        assert c.get("/readyz").status_code == 200
        assert "gateway_ready 1.0" in c.get("/metrics").text


def test_a_frozen_readiness_probe_never_blocks_the_worker_and_answers_503_in_time(
    tmp_path: Path, clock: FrozenClock
) -> None:
    """The probe blocks as a frozen database would: /healthz still answers at once, /readyz
    answers 503 after its bound, and checks meanwhile share the one stuck probe."""
    store = MemoryStore(clock)
    frozen = threading.Event()
    calls: list[float] = []

    def frozen_ping() -> None:
        calls.append(time.monotonic())
        frozen.wait(10)

    store.ping = frozen_ping  # type: ignore[method-assign]
    settings = gateway_settings(tmp_path, ready_timeout_seconds=0.5)
    app = create_app(settings, store=store, audit=MemoryAuditLog())

    async def scenario() -> tuple[int, int, float, float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
            started = time.monotonic()
            ready = asyncio.create_task(c.get("/readyz"))
            await asyncio.sleep(0.05)
            health = await c.get("/healthz")
            health_after = time.monotonic() - started
            second = await c.get("/readyz")
            ready_response = await ready
            ready_after = time.monotonic() - started
            assert second.status_code == 503
            return health.status_code, ready_response.status_code, health_after, ready_after

    try:
        health, ready, health_after, ready_after = asyncio.run(scenario())
    finally:
        frozen.set()
    assert health == 200
    assert health_after < 0.3  # not behind the frozen probe
    assert ready == 503
    assert 0.4 < ready_after < 3
    assert len(calls) == 1  # one probe thread, however many checks


def test_a_database_past_its_bounds_is_a_503_outcome_without_the_drivers_words(
    client: TestClient, captured_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = raw_store(client.app)  # type: ignore[arg-type]

    def pool_exhausted(*_args: object, **_kw: object) -> None:
        raise PoolTimeout("QueuePool limit of size 8 overflow 8 reached: María Álvarez")

    monkeypatch.setattr(store, "locate", pool_exhausted)
    response = client.get("/fhir/Patient/abc")
    assert response.status_code == 503
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "QueuePool" not in response.text
    assert "Álvarez" not in response.text
    assert "Álvarez" not in captured_logs.getvalue()
