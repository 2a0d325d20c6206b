"""Fixtures for the security tests: apps on a real SQL store (SQLite, and PostgreSQL when
configured), driven in-process over ASGI with fixed requesters standing in for the auth layer.

Unlike the disclose fixtures, these clients do **not** re-raise server exceptions: a hostile
input must be answered, and a 500 is observed as the answer it would be in production
(``raise_server_exceptions=False``), so that a test can assert on it and a strict xfail can
record it."""

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

# The demo network's shelter, clinic and survivor, exactly as the disclose tests drive them
# (server exceptions re-raised: an attack answered with a 500 fails rather than passes).
from tests.disclose.conftest import clinic, shelter, shelter_record  # noqa: F401
from tests.support.network import ALL, BASE, KINDS, gateway_settings, partner_client, post
from tests.support.records import care_plan, patient

REVIEWER_SCOPES = ("system/AuditEvent.rs", "system/Consent.rs", "system/Organization.rs")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # CRITICAL: a provoked 500 would otherwise log its traceback to stderr
    return gateway_settings(tmp_path, log_level="CRITICAL", max_body_bytes=64 * 1024)


def _answering_client(
    settings: Settings,
    store: SqlStore,
    clock: FrozenClock,
    partner_id: str,
    kind: str,
    scopes: tuple[str, ...],
    purposes: tuple[str, ...],
) -> TestClient:
    requester = Requester(partner_id, kind, f"Organization/{partner_id}", scopes, purposes)
    app = create_app(
        settings,
        store=store,
        clock=clock,
        authenticate=fixed_requester(requester),
        partner_kinds=KINDS,
    )
    return TestClient(app, base_url=BASE, raise_server_exceptions=False)


@pytest.fixture
def hostile(settings: Settings, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    """The shelter, with every scope, as a hostile partner would hold them."""
    with _answering_client(
        settings, sql_store, clock, "riverside-shelter", "shelter", ALL, ("TREAT",)
    ) as c:
        yield c


@pytest.fixture
def hostile_reviewer(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock
) -> Iterator[TestClient]:
    """The compliance office (the one requester the audit routes answer)."""
    with _answering_client(
        settings, sql_store, clock, "compliance-office", "compliance", REVIEWER_SCOPES, ("HCOMPL",)
    ) as c:
        yield c


@pytest.fixture
def planted(hostile: TestClient) -> dict[str, str]:
    """A survivor and a plan the shelter holds, so that hostile requests meet real rows."""
    survivor = post(hostile, "/fhir/Patient", patient()).json()
    plan = post(hostile, "/fhir/CarePlan", care_plan(survivor["id"])).json()
    return {"patient": survivor["id"], "plan": plan["id"]}


@pytest.fixture
def hospital(settings: Settings, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    with partner_client(settings, sql_store, clock, "st-marys-hospital", "hospital") as c:
        yield c


@pytest.fixture
def legal_aid(settings: Settings, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    with partner_client(
        settings, sql_store, clock, "northside-legal-aid", "legal-aid", purposes=("HLEGAL",)
    ) as c:
        yield c
