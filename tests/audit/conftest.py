"""Fixtures of the audit tests: each runs on SQLite and on PostgreSQL (one database for the
session, emptied before each test the way only an administrator could)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import Engine, text

from gateway.audit.chain import AuditChain, CheckpointSigner, load_public_key, public_key_path
from gateway.clock import FrozenClock
from gateway.keys import init_keys
from gateway.store.database import make_engine, upgrade
from tests.audit.helpers import EVERY, as_attacker
from tests.conftest import START, sqlite_engine
from tests.support.databases import create_database, drop_database


@pytest.fixture(scope="session")
def postgres_audit_url() -> Iterator[str]:
    base = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set")
    url = create_database(base, "gateway_audit")
    upgrade(engine := make_engine(url))
    engine.dispose()
    yield url
    drop_database(base, "gateway_audit")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        e = sqlite_engine(tmp_path)
    else:
        e = make_engine(request.getfixturevalue("postgres_audit_url"))
        with as_attacker(e) as conn:
            conn.execute(text("TRUNCATE audit_log, audit_index, audit_checkpoints"))
    yield e
    e.dispose()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    init_keys(tmp_path / "keys", START)
    return tmp_path / "keys"


@pytest.fixture
def checkpoint_file(tmp_path: Path) -> Path:
    return tmp_path / "anchor" / "audit-checkpoints"


@pytest.fixture
def chain(engine: Engine, keys: Path, checkpoint_file: Path) -> Iterator[AuditChain]:
    chain = AuditChain(
        engine,
        CheckpointSigner.from_keys_dir(keys),
        FrozenClock(START),
        checkpoint_every=EVERY,
        checkpoint_file=checkpoint_file,
    )
    yield chain
    chain.close()


@pytest.fixture
def public(keys: Path) -> ed25519.Ed25519PublicKey:
    return load_public_key(public_key_path(keys))
