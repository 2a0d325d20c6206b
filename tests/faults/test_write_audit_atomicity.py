"""A write and its audit event commit together or not at all.

The audit table stops taking rows (a trigger refuses every insert, as a full disk or a revoked
grant would). Every write then answers 503 **and writes nothing**, so the client's retry, once
the audit is back, makes exactly one record: no duplicate, and no record the log does not know.
Checkpoints falling inside a write's own transaction reach the checkpoint file only after it
commits, and the chain verifies clean afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from gateway.access.requester import Requester
from gateway.app import create_app
from gateway.audit.checkpoints import load_public_keys, public_key_path
from gateway.clock import FrozenClock
from gateway.disclose.deps import fixed_requester
from gateway.keys import KeyRing
from gateway.store.sql import SqlStore
from tests.support.network import BASE, gateway_settings
from tests.support.records import care_plan, patient

FHIR = {"Content-Type": "application/fhir+json"}
SHELTER = fixed_requester(
    Requester(partner_id="riverside-shelter", kind="shelter", scopes=("system/*.cruds",))
)


def _refuse_audit(engine: Engine, refuse: bool) -> None:
    """Make ``audit_log`` refuse (or take again) every insert, at the database."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER IF EXISTS audit_full"))
            if refuse:
                conn.execute(
                    text(
                        "CREATE TRIGGER audit_full BEFORE INSERT ON audit_log "
                        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
                    )
                )
            return
        conn.execute(text("DROP TRIGGER IF EXISTS audit_full ON audit_log"))
        if refuse:
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION audit_full() RETURNS trigger AS "
                    "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER audit_full BEFORE INSERT ON audit_log "
                    "FOR EACH ROW EXECUTE FUNCTION audit_full()"
                )
            )


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.fixture
def gateway(sql_store: SqlStore, tmp_path: Path, clock: FrozenClock) -> Iterator[TestClient]:
    settings = gateway_settings(
        tmp_path,
        audit_checkpoint_every=4,
        audit_checkpoint_file=tmp_path / "audit-checkpoints",
    )
    app = create_app(settings, store=sql_store, clock=clock, authenticate=SHELTER)
    with TestClient(app, base_url=BASE) as client:
        yield client
    _refuse_audit(sql_store.engine, False)


def _post(client: TestClient, path: str, doc: dict[str, Any]) -> Any:
    return client.post(path, content=orjson.dumps(doc), headers=FHIR)


def test_with_the_audit_unwritable_no_write_lands_and_the_retry_makes_one_record(
    gateway: TestClient, sql_store: SqlStore
) -> None:
    engine = sql_store.engine
    survivors = [patient("Okafor", "Amina", mrn=f"RSH-{n}") for n in range(6)]
    _refuse_audit(engine, True)
    refused = [_post(gateway, "/fhir/Patient", doc) for doc in survivors]
    assert [r.status_code for r in refused] == [503] * 6
    assert all(r.json()["resourceType"] == "OperationOutcome" for r in refused)
    assert _count(engine, "resources") == 0, "a write committed without its audit event"
    assert _count(engine, "audit_log") == 0

    _refuse_audit(engine, False)
    created = [_post(gateway, "/fhir/Patient", doc) for doc in survivors]
    assert [r.status_code for r in created] == [201] * 6
    assert _count(engine, "resources") == 6, "the retries made exactly one record each"
    chain = gateway.app.state.gateway.audit  # type: ignore[attr-defined]
    events = [orjson.loads(row[2]) for row in chain.rows()]
    creates = [e for e in events if e["action"] == "C" and e["outcome"] == "0"]
    assert len(creates) == 6


def test_an_update_and_a_transaction_refused_for_the_audit_change_nothing(
    gateway: TestClient, sql_store: SqlStore
) -> None:
    engine = sql_store.engine
    first = _post(gateway, "/fhir/Patient", patient("Okafor", "Amina", mrn="RSH-9")).json()
    _refuse_audit(engine, True)
    changed = {**first, "gender": "other"}
    put = gateway.put(f"/fhir/Patient/{first['id']}", content=orjson.dumps(changed), headers=FHIR)
    assert put.status_code == 503
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                "resource": care_plan(first["id"]),
                "request": {"method": "POST", "url": "CarePlan"},
            }
        ],
    }
    tx = gateway.post("/fhir", content=orjson.dumps(bundle), headers=FHIR)
    assert tx.status_code == 503
    _refuse_audit(engine, False)
    now = gateway.get(f"/fhir/Patient/{first['id']}").json()
    assert now["meta"]["versionId"] == "1"
    assert now["gender"] == first["gender"]
    assert gateway.get("/fhir/CarePlan").json()["total"] == 0


def test_checkpoints_signed_inside_writes_reach_the_file_after_commit_and_verify(
    gateway: TestClient, sql_store: SqlStore, tmp_path: Path, key_ring: KeyRing
) -> None:
    for n in range(9):  # writes and their events, checkpoints every 4 events
        assert _post(gateway, "/fhir/Patient", patient(mrn=f"RSH-C{n}")).status_code == 201
    chain = gateway.app.state.gateway.audit  # type: ignore[attr-defined]
    lines = (tmp_path / "audit-checkpoints").read_text().splitlines()
    assert len(lines) >= 2, "checkpoints signed in a write's transaction were filed"
    keys = load_public_keys(public_key_path(tmp_path / "keys"))
    result = chain.verify(keys)
    assert result.ok, str(result)
    assert result.unanchored < 4
