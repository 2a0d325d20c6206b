"""The audit chain on SQLite and PostgreSQL: appends are gapless and chained, checkpoints are
signed, and ``verify`` names the first bad seq for every kind of tampering a database
administrator could do (with the append-only trigger switched off, as an attacker would)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from gateway.audit.chain import (
    GENESIS,
    AuditChain,
    CheckpointSigner,
    chain_hash,
)
from gateway.clock import FrozenClock
from gateway.errors import ServiceUnavailable
from gateway.store.database import make_engine
from tests.audit.helpers import EVERY, as_attacker, event, fill, tamper
from tests.conftest import START


def test_appends_are_numbered_without_gaps_and_chained(
    chain: AuditChain, public: ed25519.Ed25519PublicKey
) -> None:
    assert chain.append([event(1), event(2)]) == [1, 2]
    assert chain.append([event(3)]) == [3]
    rows = list(chain.rows())
    assert [r[0] for r in rows] == [1, 2, 3]
    assert rows[0][3] == GENESIS.hex()
    assert rows[1][3] == rows[0][4]
    seq, recorded, body, prev, digest = rows[2]
    assert chain_hash(bytes.fromhex(prev), seq, recorded, body.encode()).hex() == digest
    result = chain.verify(public)
    assert result.ok
    assert str(result) == (
        "verified 3 events and 0 signed checkpoints; "
        "3 events not yet anchored in the checkpoint file (absent)"
    )


def test_a_checkpoint_is_signed_every_n_events_and_on_demand(
    chain: AuditChain, public: ed25519.Ed25519PublicKey, checkpoint_file: Path
) -> None:
    fill(chain, 25)
    assert [c.seq for c in chain.checkpoints()] == [10, 20]
    on_demand = chain.checkpoint()
    assert on_demand is not None
    assert on_demand.seq == 25
    assert [c.seq for c in chain.checkpoints()] == [10, 20, 25]
    assert len(checkpoint_file.read_bytes().splitlines()) == 3
    assert chain.verify(public, checkpoint_files=[checkpoint_file]).ok


@pytest.mark.parametrize(
    ("attack", "bad_seq", "problem"),
    [
        (["UPDATE audit_log SET event = replace(event, 'cp7', 'cp8') WHERE seq = 8"], 8, "edited"),
        (["DELETE FROM audit_log WHERE seq = 12"], 12, "deleted"),
        (
            # swap two events: each row moves to the other's place, hashes and all
            [
                "UPDATE audit_log SET seq = -1 WHERE seq = 5",
                "UPDATE audit_log SET seq = 5 WHERE seq = 6",
                "UPDATE audit_log SET seq = 6 WHERE seq = -1",
            ],
            5,
            "moved here from seq 6",
        ),
        (
            # renumber rows 15.. one up and slip a forged row in at 15
            [
                "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 15",
                "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000",
                "INSERT INTO audit_log (seq, recorded, event, prev_hash, hash) "
                "SELECT 15, recorded, event, prev_hash, hash FROM audit_log WHERE seq = 16",
            ],
            16,
            "moved here from seq 15",
        ),
        (["DELETE FROM audit_log WHERE seq > 17"], 18, "truncated"),
    ],
    ids=["edit-one", "delete-one", "swap-two", "insert-one", "truncate-the-tail"],
)
def test_verify_names_the_first_bad_seq_for_each_kind_of_tampering(
    chain: AuditChain,
    engine: Engine,
    public: ed25519.Ed25519PublicKey,
    attack: list[str],
    bad_seq: int,
    problem: str,
) -> None:
    fill(chain, 25)
    assert chain.verify(public).ok
    tamper(engine, *attack)
    result = chain.verify(public)
    assert not result.ok
    assert result.bad_seq == bad_seq, result
    assert problem in (result.problem or ""), result


def test_truncating_the_table_and_its_checkpoints_is_caught_by_the_checkpoint_file(
    chain: AuditChain, engine: Engine, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 25)
    tamper(
        engine,
        "DELETE FROM audit_log WHERE seq > 9",
        "DELETE FROM audit_index WHERE seq > 9",
        "DELETE FROM audit_checkpoints",
    )
    assert chain.verify(public, checkpoint_files=()).ok  # the database alone can no longer tell
    outside = chain.verify(public)  # the chain's own checkpoint file
    assert not outside.ok
    assert outside.bad_seq == 10
    assert "truncated" in (outside.problem or "")


def test_a_chain_rewritten_from_the_start_disagrees_with_its_signed_checkpoint(
    chain: AuditChain, engine: Engine, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 12)
    tamper(
        engine,
        "UPDATE audit_log SET event = replace(event, 'cp3', 'cp9') WHERE seq = 4",
        "UPDATE audit_index SET value = replace(value, 'cp3', 'cp9') WHERE seq = 4",
    )
    # The attacker recomputes every hash after the edit: the chain is consistent again ...
    rows = list(chain.rows())
    prev = GENESIS
    with as_attacker(engine) as conn:
        for seq, recorded, body, _, _ in rows:
            digest = chain_hash(prev, seq, recorded, body.encode())
            conn.execute(
                text("UPDATE audit_log SET prev_hash = :p, hash = :h WHERE seq = :s"),
                {"p": prev.hex(), "h": digest.hex(), "s": seq},
            )
            prev = digest
    # ... but not with what the gateway signed at seq 10.
    result = chain.verify(public)
    assert result.bad_seq == 10
    assert "rewritten" in (result.problem or "")


def test_a_forged_checkpoint_signature_is_refused(
    chain: AuditChain, engine: Engine, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 10)
    tamper(engine, "UPDATE audit_checkpoints SET signed_at = '2030-01-01T00:00:00.000000'")
    result = chain.verify(public)
    assert result.bad_seq == 10
    assert "signature" in (result.problem or "")


def test_verify_with_another_gateways_key_fails(chain: AuditChain) -> None:
    fill(chain, 10)
    stranger = ed25519.Ed25519PrivateKey.generate().public_key()
    assert not chain.verify(stranger).ok


@pytest.mark.postgres
def test_the_application_cannot_change_or_delete_events_on_postgresql(
    postgres_audit_url: str, keys: Path
) -> None:
    engine = make_engine(postgres_audit_url)
    with as_attacker(engine) as conn:
        conn.execute(text("TRUNCATE audit_log, audit_index, audit_checkpoints"))
    chain = AuditChain(engine, CheckpointSigner.from_keys_dir(keys), FrozenClock(START))
    chain.append([event(1)])
    for statement in (
        "UPDATE audit_log SET event = '{}'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with engine.begin() as conn, pytest.raises(DBAPIError, match="append-only"):
            conn.execute(text(statement))
    assert len(list(chain.rows())) == 1
    chain.close()
    engine.dispose()


def test_concurrent_writers_leave_one_gapless_chain(
    chain: AuditChain, engine: Engine, public: ed25519.Ed25519PublicKey
) -> None:
    writers, each = 8, 1000 if engine.dialect.name == "postgresql" else 150
    seqs: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for i in range(each):
                got = chain.append([event(w * each + i)])
                with lock:
                    seqs.extend(got)
        except BaseException as exc:  # pragma: no cover (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(seqs) == list(range(1, writers * each + 1))
    result = chain.verify(public)
    assert result.ok, result
    assert result.events == writers * each


def test_two_gateways_on_one_database_share_one_chain(
    chain: AuditChain,
    engine: Engine,
    keys: Path,
    public: ed25519.Ed25519PublicKey,
    checkpoint_file: Path,
) -> None:
    """Another process (here: another AuditChain on its own engine) appends through the
    database's lock, not the in-process one."""
    other_engine = make_engine(engine.url.render_as_string(hide_password=False))
    other = AuditChain(
        other_engine,
        CheckpointSigner.from_keys_dir(keys),
        FrozenClock(START),
        checkpoint_every=EVERY,
        checkpoint_file=checkpoint_file,  # one host, one file
    )
    threads = [
        threading.Thread(target=lambda c=c: [c.append([event(i)]) for i in range(60)])
        for c in (chain, other, chain, other)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    other_engine.dispose()
    result = chain.verify(public)
    assert result.ok, result
    assert result.events == 240


def test_an_unwritable_log_fails_closed(keys: Path, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/no-schema.db")  # no audit tables
    chain = AuditChain(engine, CheckpointSigner.from_keys_dir(keys), FrozenClock(START))
    with pytest.raises(ServiceUnavailable):
        chain.append([event(1)])
    chain.close()
    engine.dispose()
