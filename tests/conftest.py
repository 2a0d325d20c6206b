"""Fixtures shared by the suite: clocks, key rings, and every store implementation.

``any_store`` runs a test against the in-memory twin, SQLite and PostgreSQL (at
``GATEWAY_TEST_POSTGRES_URL``, else the local server when one answers; without either the run
says so in one line before its summary): the contract every store must keep.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from gateway.clock import FrozenClock
from gateway.keys import KeyRing, new_encryption_key
from gateway.store.database import make_engine, upgrade
from gateway.store.memory import MemoryStore
from gateway.store.port import ResourceStore
from gateway.store.sql import SqlStore
from tests.support.databases import create_database, drop_database

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _answers(url: str) -> bool:
    try:
        import psycopg

        psycopg.connect(url.replace("+psycopg", ""), connect_timeout=2).close()
    except Exception:  # any failure means: no server to test against
        return False
    return True


# The PostgreSQL tests run against GATEWAY_TEST_POSTGRES_URL (CI sets it), else against the
# local server when one answers; set before xdist starts its workers, so they inherit it.
if not os.environ.get("GATEWAY_TEST_POSTGRES_URL") and _answers(DEFAULT_POSTGRES_URL):
    os.environ["GATEWAY_TEST_POSTGRES_URL"] = DEFAULT_POSTGRES_URL
POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not POSTGRES_URL:
        terminalreporter.write_line(
            "PostgreSQL: no server answered at 127.0.0.1:5432/test and GATEWAY_TEST_POSTGRES_URL "
            "is not set, so every PostgreSQL test was skipped"
        )


START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    """Moves one millisecond per reading, so versions get distinct lastUpdated stamps."""
    return FrozenClock(START, step=timedelta(milliseconds=1))


@pytest.fixture
def key_ring() -> KeyRing:
    key = new_encryption_key(START)
    return KeyRing([key], key.key_id)


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    if not POSTGRES_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set")
    engine = make_engine(create_database(POSTGRES_URL, "gateway_store"))
    upgrade(engine)
    yield engine
    engine.dispose()
    drop_database(POSTGRES_URL, "gateway_store")


def _truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE search_index, resource_versions, resources, ingest_ledger, quarantine, "
                "ingest_marks "
                "RESTART IDENTITY"
            )
        )
        # The audit log is append-only for the application; a test starts with an empty one
        # the way only a database administrator could (bypassing the trigger).
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("TRUNCATE audit_log, audit_index, audit_checkpoints"))


def sqlite_engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path}/gateway.db")
    upgrade(engine)
    return engine


def _sql_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, clock: FrozenClock, key_ring: KeyRing
) -> Iterator[SqlStore]:
    if kind == "sqlite":
        store = SqlStore(sqlite_engine(tmp_path), key_ring, clock)
        yield store
        store.close()
        return
    engine: Engine = request.getfixturevalue("postgres_engine")
    _truncate(engine)
    yield SqlStore(engine, key_ring, clock)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FrozenClock, key_ring: KeyRing
) -> Iterator[ResourceStore]:
    if request.param == "memory":
        yield MemoryStore(clock)
    else:
        yield from _sql_store(request.param, request, tmp_path, clock, key_ring)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FrozenClock, key_ring: KeyRing
) -> Iterator[SqlStore]:
    yield from _sql_store(request.param, request, tmp_path, clock, key_ring)
