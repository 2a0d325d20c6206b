"""Logs and metrics: structured, with a request id, and never a survivor's data."""

from __future__ import annotations

import io
import logging

import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.observability import LOGGER, JsonFormatter
from tests.disclose.test_rest import post
from tests.support.records import patient


@pytest.fixture
def captured_logs(client: TestClient) -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield stream  # type: ignore[misc]
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
    store = client.app.state.gateway.store  # type: ignore[attr-defined]

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
