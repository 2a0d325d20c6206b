"""Encryption at rest: what the database holds is ciphertext bound to its row, under a key ring
that rotates without downtime."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from gateway.clock import FrozenClock
from gateway.errors import ServiceUnavailable
from gateway.keys import (
    ENCRYPTION_FILE,
    DecryptionError,
    EncryptionKey,
    FileKeyRing,
    KeyMaterialError,
    KeyRing,
    check_keys,
    init_keys,
    rotate_encryption_key,
)
from gateway.store.schema import resource_versions
from gateway.store.sql import SqlStore
from tests.conftest import START
from tests.support.records import patient
from tests.support.valid import valid


def test_the_database_never_holds_a_name_or_identifier_in_a_version_row(
    sql_store: SqlStore,
) -> None:
    stored = sql_store.create(valid(patient("Álvarez", "María", mrn="RSH-000412")))
    with sql_store.engine.connect() as conn:
        payload = conn.execute(select(resource_versions.c.payload)).scalar_one()
    assert b"RSH-000412" not in payload
    assert "Álvarez".encode() not in payload
    assert stored.body not in payload


def test_a_tampered_ciphertext_is_refused_not_served(sql_store: SqlStore) -> None:
    stored = sql_store.create(valid(patient()))
    with sql_store.engine.begin() as conn:
        payload = conn.execute(select(resource_versions.c.payload)).scalar_one()
        flipped = payload[:-1] + bytes([payload[-1] ^ 1])
        conn.execute(update(resource_versions).values(payload=flipped))
    with pytest.raises(ServiceUnavailable):
        sql_store.read("Patient", stored.id)


def test_a_ciphertext_moved_to_another_row_does_not_decrypt(sql_store: SqlStore) -> None:
    maria = sql_store.create(valid(patient("Álvarez", "María", mrn="RSH-1")))
    amina = sql_store.create(valid(patient("Okafor", "Amina", mrn="RSH-2")))
    with sql_store.engine.begin() as conn:
        rows = conn.execute(
            select(resource_versions.c.rid, resource_versions.c.payload).order_by(
                resource_versions.c.rid
            )
        ).all()
        conn.execute(
            update(resource_versions)
            .where(resource_versions.c.rid == rows[1].rid)
            .values(payload=rows[0].payload)
        )
    assert sql_store.read("Patient", maria.id).body == maria.body
    with pytest.raises(ServiceUnavailable):
        sql_store.read("Patient", amina.id)


def test_rotation_keeps_old_rows_readable_and_reencrypt_moves_them(
    tmp_path: Path, sql_store: SqlStore, clock: FrozenClock
) -> None:
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir, START)
    ring = FileKeyRing(keys_dir, recheck_seconds=0)
    store = SqlStore(sql_store.engine, ring, clock)
    old = store.create(valid(patient(mrn="RSH-1")))
    first_key = ring.current().active

    rotate_encryption_key(keys_dir, START + timedelta(days=1))
    new = store.create(valid(patient(mrn="RSH-2")))
    second_key = ring.current().active
    assert second_key != first_key
    assert store.count_by_key() == {first_key: 1, second_key: 1}
    assert store.read("Patient", old.id).body == old.body

    assert sum(store.reencrypt(batch_size=1)) == 1
    assert store.count_by_key() == {second_key: 2}
    assert store.read("Patient", old.id).body == old.body
    assert store.read("Patient", new.id).body == new.body


def test_keys_init_makes_private_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    created = init_keys(keys_dir, START)
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    for path in created:
        if not path.name.endswith(".pub.pem"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = (keys_dir / ENCRYPTION_FILE).read_bytes()
    with pytest.raises(KeyMaterialError, match="refusing to overwrite"):
        init_keys(keys_dir, START)
    assert (keys_dir / ENCRYPTION_FILE).read_bytes() == before
    check_keys(keys_dir)


def test_missing_keys_stop_start_up(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="keys init"):
        check_keys(tmp_path / "nowhere")


def test_a_key_file_readable_by_others_stops_start_up(tmp_path: Path) -> None:
    init_keys(tmp_path, START)
    os.chmod(tmp_path / ENCRYPTION_FILE, 0o644)
    with pytest.raises(KeyMaterialError, match="readable by others"):
        check_keys(tmp_path)


def test_a_placeholder_key_is_refused() -> None:
    with pytest.raises(KeyMaterialError, match="placeholder"):
        KeyRing([EncryptionKey("k1", "2026-11-23", b"\x00" * 32)], "k1")
    with pytest.raises(KeyMaterialError, match="256 bits"):
        KeyRing([EncryptionKey("k1", "2026-11-23", b"changeme")], "k1")


def test_a_malformed_key_file_is_a_clear_error(tmp_path: Path) -> None:
    init_keys(tmp_path, START)
    (tmp_path / ENCRYPTION_FILE).write_text('{"active": "k1", "keys": [{"id": "k1"}]}')
    with pytest.raises(KeyMaterialError, match="malformed"):
        FileKeyRing(tmp_path)


def test_decrypting_under_the_wrong_associated_data_fails(key_ring: KeyRing) -> None:
    key_id, blob = key_ring.encrypt(b'{"resourceType":"Patient"}', b"Patient/a/1")
    assert key_ring.decrypt(key_id, blob, b"Patient/a/1") == b'{"resourceType":"Patient"}'
    with pytest.raises(DecryptionError):
        key_ring.decrypt(key_id, blob, b"Patient/b/1")
    with pytest.raises(DecryptionError):
        key_ring.decrypt("unknown-key", blob, b"Patient/a/1")
