"""A database that stops answering: locked by someone else, or frozen outright. Requests fail
with a 503 OperationOutcome after the configured bounds instead of hanging for the outage,
/readyz says not-ready (also when only the audit log cannot take a write), and /healthz stays
up throughout. The bounds here are short (a fraction of a second) to keep the tests quick."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from gateway.access.requester import Requester
from gateway.app import create_app, raw_store
from gateway.clock import FrozenClock
from gateway.disclose.deps import fixed_requester
from gateway.keys import KeyRing
from gateway.store.database import DatabaseTimeouts, make_engine, upgrade
from gateway.store.sql import SqlStore
from tests.conftest import POSTGRES_URL
from tests.faults.proxy import freezable_proxy
from tests.support.databases import create_database, drop_database
from tests.support.network import BASE, gateway_settings
from tests.support.records import patient

BOUNDS = DatabaseTimeouts(connect=2, statement=1.0, lock=0.3, pool=0.5, client_grace=0.5)
FHIR = {"Content-Type": "application/fhir+json"}
SHELTER = fixed_requester(
    Requester(partner_id="riverside-shelter", kind="shelter", scopes=("system/*.cruds",))
)

Locker = Callable[[str], AbstractContextManager[None]]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set")
    url = create_database(POSTGRES_URL, "gateway_faults")
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    drop_database(POSTGRES_URL, "gateway_faults")


def _empty(url: str) -> None:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("TRUNCATE search_index, resource_versions, resources RESTART IDENTITY")
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("TRUNCATE audit_log, audit_index, audit_checkpoints")


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def _postgres_lock(url: str, table: str) -> Iterator[None]:
    """Another session holds ``table`` in EXCLUSIVE mode: reads go on, writes wait."""
    with psycopg.connect(_libpq(url)) as conn:
        conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        yield
        conn.rollback()


@contextmanager
def _sqlite_lock(path: Path) -> Iterator[None]:
    """Another connection holds the writer's lock: readers go on (WAL), writers wait."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def bounded(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FrozenClock, key_ring: KeyRing
) -> Iterator[tuple[SqlStore, Locker]]:
    """A store whose engine has short bounds, and a way to lock one of its tables."""
    if request.param == "sqlite":
        path = tmp_path / "bounded.db"
        engine = make_engine(f"sqlite:///{path}", timeouts=BOUNDS)
        upgrade(engine)

        def lock(table: str) -> AbstractContextManager[None]:
            return _sqlite_lock(path)  # SQLite locks the whole database, not one table

    else:
        url = request.getfixturevalue("postgres_url")
        _empty(url)
        engine = make_engine(url, timeouts=BOUNDS)

        def lock(table: str) -> AbstractContextManager[None]:
            return _postgres_lock(url, table)

    store = SqlStore(engine, key_ring, clock)
    yield store, lock
    store.close()


def _client(tmp_path: Path, store: SqlStore, clock: FrozenClock) -> TestClient:
    settings = gateway_settings(tmp_path, ready_timeout_seconds=2)
    return TestClient(
        create_app(settings, store=store, clock=clock, authenticate=SHELTER), base_url=BASE
    )


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def _new_patient(c: TestClient) -> Any:
    return c.post("/fhir/Patient", content=orjson.dumps(patient(mrn="RSH-FAULT-1")), headers=FHIR)


def test_a_write_held_up_by_a_lock_fails_with_503_after_the_lock_bound(
    bounded: tuple[SqlStore, Locker], tmp_path: Path, clock: FrozenClock
) -> None:
    store, lock = bounded
    with _client(tmp_path, store, clock) as c:
        with lock("resources"):
            refused, seconds = _timed(lambda: _new_patient(c))
            assert c.get("/healthz").status_code == 200
        assert refused.status_code == 503
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert "RSH-FAULT-1" not in refused.text
        assert seconds < 3  # the lock bound (0.3 s) and overheads, not the lock's holder
        assert _new_patient(c).status_code == 201  # and the gateway recovers by itself


def test_readyz_is_not_ready_while_the_audit_log_cannot_take_a_write_and_ready_after(
    bounded: tuple[SqlStore, Locker], tmp_path: Path, clock: FrozenClock
) -> None:
    store, lock = bounded
    with _client(tmp_path, store, clock) as c:
        assert c.get("/readyz").status_code == 200
        with lock("audit_log"):
            store.ping()  # the database itself still answers
            not_ready, seconds = _timed(lambda: c.get("/readyz"))
            assert c.get("/healthz").status_code == 200
        assert not_ready.status_code == 503
        assert not_ready.json()["issue"][0]["diagnostics"] == "the audit log cannot be written"
        assert seconds < 2
        assert c.get("/readyz").status_code == 200
    with store.engine.connect() as conn:  # the probes wrote nothing into the chain
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == 0


@pytest.mark.postgres
def test_a_frozen_postgres_server_costs_a_request_seconds_not_the_outage(
    postgres_url: str, tmp_path: Path, clock: FrozenClock, key_ring: KeyRing
) -> None:
    """The server stops answering mid-service (paused), its kernel still acknowledging:
    neither TCP nor the server's own statement timeout notices, the client's bound does."""
    _empty(postgres_url)
    parsed = make_url(postgres_url)
    with freezable_proxy((parsed.host or "127.0.0.1", parsed.port or 5432)) as proxy:
        through: Engine = make_engine(
            parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
            timeouts=BOUNDS,
        )
        store = SqlStore(through, key_ring, clock)
        with _client(tmp_path, store, clock) as c:
            created = _new_patient(c)
            assert created.status_code == 201
            read_path = f"/fhir/Patient/{created.json()['id']}"
            assert c.get(read_path).status_code == 200
            proxy.freeze()
            # Should the bounds fail, the outage ends after 20 s and the timings below fail.
            safety = threading.Timer(20, proxy.thaw)
            safety.start()
            try:
                refused, seconds = _timed(lambda: c.get(read_path))
                not_ready, ready_seconds = _timed(lambda: c.get("/readyz"))
                assert c.get("/healthz").status_code == 200
            finally:
                proxy.thaw()
                safety.cancel()
            assert refused.status_code == 503
            assert refused.json()["resourceType"] == "OperationOutcome"
            assert seconds < 12  # a few bounds of 1-2 s (the read, its audit, a reconnect)
            assert not_ready.status_code == 503
            assert ready_seconds < 3  # the readiness bound (2 s)
            assert c.get(read_path).status_code == 200  # the stuck connections were dropped
        store.close()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_the_served_app_takes_its_database_bounds_from_the_settings(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path}/settings.db"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    settings = gateway_settings(
        tmp_path,
        database_url=url,
        db_statement_timeout_seconds=7,
        db_lock_timeout_seconds=2.5,
        db_pool_timeout_seconds=4,
    )
    app = create_app(settings, authenticate=SHELTER)
    engine: Engine = raw_store(app).engine  # type: ignore[attr-defined]
    try:
        assert engine.pool.timeout() == 4  # type: ignore[attr-defined]
        with engine.connect() as conn:
            if backend == "sqlite":
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 2500
            else:
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "7s"
                assert conn.exec_driver_sql("SHOW lock_timeout").scalar_one() == "2500ms"
    finally:
        engine.dispose()
