"""An app per test, on a real SQL store (SQLite, and PostgreSQL when configured), driven
in-process over ASGI with a fixed requester standing in for the auth layer; and the demo
network's shelter and clinic, with a survivor the shelter registered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.access.requester import Requester
from gateway.app import create_app
from gateway.clock import FrozenClock
from gateway.disclose.deps import fixed_requester
from gateway.settings import Settings
from gateway.store.sql import SqlStore
from tests.support.network import BASE, gateway_settings, partner_client, post
from tests.support.records import care_plan, patient, referral, task


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path, max_body_bytes=64 * 1024)


@pytest.fixture
def client(settings: Settings, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    shelter = fixed_requester(
        Requester(partner_id="riverside-shelter", kind="shelter", scopes=("system/*.cruds",))
    )
    app = create_app(settings, store=sql_store, clock=clock, authenticate=shelter)
    with TestClient(app, base_url=BASE) as test_client:
        yield test_client


@pytest.fixture
def anonymous(settings: Settings, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    """The app exactly as served: no override of the auth placeholder."""
    with TestClient(create_app(settings, store=sql_store, clock=clock), base_url=BASE) as c:
        yield c


@pytest.fixture
def shelter(settings: Settings, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    with partner_client(settings, sql_store, clock, "riverside-shelter", "shelter") as c:
        yield c


@pytest.fixture
def clinic(settings: Settings, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    with partner_client(settings, sql_store, clock, "harbor-clinic", "clinic") as c:
        yield c


@pytest.fixture
def shelter_record(shelter: TestClient) -> dict[str, str]:
    """A survivor the shelter registered, with a plan and a referral to the clinic."""
    survivor = post(shelter, "/fhir/Patient", patient("Álvarez", "María", mrn="RSH-000412")).json()
    plan = post(shelter, "/fhir/CarePlan", care_plan(survivor["id"])).json()
    ref = post(shelter, "/fhir/ServiceRequest", referral(survivor["id"])).json()
    work = post(shelter, "/fhir/Task", task(ref["id"], survivor["id"])).json()
    return {
        "patient": survivor["id"],
        "plan": plan["id"],
        "referral": ref["id"],
        "task": work["id"],
    }
