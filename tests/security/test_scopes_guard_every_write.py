"""Scopes guard every door: ``c`` every create (POST, and POST entries of transactions and
batches), ``u`` every update; a PUT never creates."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.clock import FrozenClock
from gateway.settings import Settings
from gateway.store.sql import SqlStore
from tests.support.network import FHIR, partner_client, post
from tests.support.records import care_plan


def _bundle(kind: str, method: str, url: str, resource: dict[str, object]) -> dict[str, object]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [{"resource": resource, "request": {"method": method, "url": url}}],
    }


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_an_update_only_token_creates_nothing_through_a_bundle(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, kind: str
) -> None:
    scopes = ("system/CarePlan.u", "system/CarePlan.rs")
    with partner_client(settings, sql_store, clock, "harbor-clinic", "clinic", scopes) as c:
        answer = post(c, "/fhir", _bundle(kind, "POST", "CarePlan", care_plan("p1")))
        if kind == "transaction":
            assert answer.status_code == 403
        else:
            assert answer.json()["entry"][0]["response"]["status"] == "403"
        put = c.put(
            "/fhir/CarePlan/squat", content=orjson.dumps({**care_plan("p1"), "id": "squat"}),
            headers=FHIR,
        )  # fmt: skip
        assert put.status_code == 404
        assert c.get("/fhir/CarePlan?_summary=count").json()["total"] == 0


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_create_only_token_creates_inside_a_bundle(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, kind: str
) -> None:
    with partner_client(
        settings, sql_store, clock, "harbor-clinic", "clinic", ("system/CarePlan.c",)
    ) as c:
        answer = post(c, "/fhir", _bundle(kind, "POST", "CarePlan", care_plan("p1")))
        assert answer.status_code == 200, answer.text
        status = answer.json()["entry"][0]["response"]["status"]
        assert status.startswith("201")


def test_a_create_only_token_cannot_update(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, clinic: TestClient
) -> None:
    plan = post(clinic, "/fhir/CarePlan", care_plan("p1")).json()
    with partner_client(
        settings, sql_store, clock, "harbor-clinic", "clinic", ("system/CarePlan.c",)
    ) as c:
        url = f"/fhir/CarePlan/{plan['id']}"
        assert c.put(url, content=orjson.dumps(plan), headers=FHIR).status_code == 403
