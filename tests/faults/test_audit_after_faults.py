"""``audit verify`` raises no alarm after faults that really happen: a worker killed while it
appends (between its commit and the checkpoint file, or mid-transaction), and a database outage
during appends (PostgreSQL: every connection terminated, as a restart does; SQLite: the file
held by another writer past the busy bound). It still catches tampering (tests/audit/)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from gateway.audit.chain import AuditChain
from gateway.audit.checkpoints import CheckpointSigner, load_public_keys, public_key_path
from gateway.clock import SystemClock
from gateway.errors import ServiceUnavailable
from gateway.keys import init_keys
from gateway.store.database import DatabaseTimeouts, make_engine, upgrade
from tests.conftest import POSTGRES_URL
from tests.support.databases import create_database, drop_database

EVERY = 7  # a checkpoint every 7 events: kills land between commits and file lines often

APPENDER = """
import sys, time
from pathlib import Path
from gateway.audit.chain import AuditChain
from gateway.audit.checkpoints import CheckpointSigner
from gateway.clock import SystemClock
from gateway.store.database import make_engine
url, keys, file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
chain = AuditChain(make_engine(url, pool_size=1), CheckpointSigner.from_keys_dir(keys),
                   SystemClock(), checkpoint_every=int(sys.argv[4]), checkpoint_file=file)
print("ready", flush=True)
n = 0
while True:
    n += 1
    chain.append([{"resourceType": "AuditEvent", "action": "R", "outcome": "0", "n": n}])
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/faults.db"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    if not POSTGRES_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set")
    url = create_database(POSTGRES_URL, "audit_faults")
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    drop_database(POSTGRES_URL, "audit_faults")


@contextmanager
def _chain(url: str, keys: Path, file: Path, **bounds: float) -> Iterator[AuditChain]:
    engine = make_engine(url, timeouts=DatabaseTimeouts(**bounds) if bounds else None)
    chain = AuditChain(
        engine,
        CheckpointSigner.from_keys_dir(keys),
        SystemClock(),
        checkpoint_every=EVERY,
        checkpoint_file=file,
    )
    try:
        yield chain
    finally:
        chain.close()
        engine.dispose()


def _verify(url: str, keys: Path, file: Path) -> tuple[bool, str, int]:
    with _chain(url, keys, file) as chain:
        result = chain.verify(load_public_keys(public_key_path(keys)))
        return result.ok, str(result), result.events


def test_appenders_killed_mid_flight_leave_a_log_that_verifies(
    database: str, tmp_path: Path
) -> None:
    keys, file = tmp_path / "keys", tmp_path / "audit-checkpoints"
    init_keys(keys, datetime.now(UTC))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for round_ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", APPENDER, database, str(keys), str(file), str(EVERY)],
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + 0.17 * round_)  # a different moment of the append each round
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    ok, summary, events = _verify(database, keys, file)
    assert events > 4 * EVERY, "the appenders wrote too little to prove anything"
    assert ok, summary


def test_a_database_outage_during_appends_leaves_a_log_that_verifies(
    database: str, tmp_path: Path
) -> None:
    keys, file = tmp_path / "keys", tmp_path / "audit-checkpoints"
    init_keys(keys, datetime.now(UTC))
    with _chain(database, keys, file, connect=2, statement=1.0, lock=0.3, pool=1.0) as chain:
        outcomes = _append_through_outages(chain, database)
    assert outcomes["refused"] > 0, "the outage was never felt: the test proved nothing"
    assert outcomes["ok"] > 3 * EVERY
    ok, summary, _ = _verify(database, keys, file)
    assert ok, summary


def _append_through_outages(chain: AuditChain, database: str) -> dict[str, int]:
    stop = threading.Event()
    outcomes = {"ok": 0, "refused": 0}

    def append() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                chain.append([{"resourceType": "AuditEvent", "action": "R", "n": n}])
                outcomes["ok"] += 1
            except ServiceUnavailable:
                outcomes["refused"] += 1
                time.sleep(0.01)

    writers = [threading.Thread(target=append) for _ in range(3)]
    for w in writers:
        w.start()
    try:
        for _ in range(3):
            time.sleep(0.3)
            _outage(database)
        time.sleep(0.3)
    finally:
        stop.set()
        for w in writers:
            w.join(timeout=30)
    return outcomes


def _outage(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # Another writer holds the database past the appenders' busy bound.
        lite = sqlite3.connect(parsed.database or "", isolation_level=None, timeout=10)
        lite.execute("BEGIN IMMEDIATE")
        time.sleep(0.8)
        lite.execute("ROLLBACK")
        lite.close()
        return
    admin = parsed.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (parsed.database,),
        )
