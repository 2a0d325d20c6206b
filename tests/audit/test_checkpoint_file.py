"""The checkpoint file anchors the log outside the database: by default beside it, written only
after the commit it signs, append-only. ``verify`` trusts only the file's checkpoints as the
anchor when there is a file (whoever rewrites the tables can delete the database's checkpoints
too), reports how many events are not yet anchored, and fails when more than
``checkpoint_every`` are."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import Engine, text

from gateway.audit.chain import GENESIS, AuditChain, CheckpointSigner, chain_hash
from gateway.audit.checkpoints import CheckpointFile
from gateway.clock import FrozenClock
from gateway.errors import ServiceUnavailable
from gateway.settings import Settings
from tests.audit.helpers import EVERY, as_attacker, event, fill, tamper
from tests.conftest import START


def lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line]


def seqs_in(path: Path) -> list[int]:
    found, _ = CheckpointFile(path).read()
    return [c.seq for c in found]


# -- where it is ------------------------------------------------------------------------------


def test_by_default_the_file_is_beside_a_sqlite_database_not_inside_it(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/db/gateway.db")
    assert settings.checkpoint_file == tmp_path / "db" / "audit-checkpoints"
    assert Settings().checkpoint_file == Path("var/audit-checkpoints")  # ./var/gateway.db


def test_for_postgresql_the_default_is_var_under_the_working_directory() -> None:
    settings = Settings(database_url="postgresql+psycopg://gateway@db.internal/gateway")
    assert settings.checkpoint_file == Path("var/audit-checkpoints")


def test_the_file_is_configurable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_AUDIT_CHECKPOINT_FILE", str(tmp_path / "worm" / "anchor"))
    assert Settings().checkpoint_file == tmp_path / "worm" / "anchor"


# -- how it is written --------------------------------------------------------------------------


def test_checkpoints_are_appended_to_a_private_file_in_a_private_directory(
    chain: AuditChain, checkpoint_file: Path
) -> None:
    fill(chain, 10)
    assert stat.S_IMODE(checkpoint_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(checkpoint_file.stat().st_mode) == 0o600
    first = checkpoint_file.read_bytes()
    fill(chain, 15, offset=10)
    assert chain.checkpoint() is not None
    assert checkpoint_file.read_bytes().startswith(first)  # appended, never rewritten
    assert seqs_in(checkpoint_file) == [10, 20, 25]


def test_a_line_torn_by_a_crash_is_skipped_and_the_next_line_starts_afresh(
    chain: AuditChain, checkpoint_file: Path, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 10)
    with checkpoint_file.open("ab") as fh:
        fh.write(b'{"seq":20,"hash":"ab')  # the machine stopped mid-write
    fill(chain, 10, offset=10)
    assert seqs_in(checkpoint_file) == [10, 20]
    result = chain.verify(public)
    assert result.ok, result
    assert "1 unreadable line(s)" in str(result)


# -- what verify reports ------------------------------------------------------------------------


def test_verify_reports_how_many_events_are_not_yet_anchored(
    chain: AuditChain, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 27)
    result = chain.verify(public)
    assert result.ok
    assert result.unanchored == 7
    assert str(result).endswith("7 events not yet anchored in the checkpoint file")


def test_a_deleted_checkpoint_file_fails_once_more_events_than_checkpoint_every_are_unanchored(
    chain: AuditChain, checkpoint_file: Path, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 25)
    checkpoint_file.unlink()
    result = chain.verify(public)
    assert not result.ok
    assert result.bad_seq == 1
    assert result.problem == (
        "25 events are not anchored by a checkpoint in the checkpoint file (absent) "
        f"(at most {EVERY} may be): its checkpoints are missing"
    )
    # The database's own checkpoints would have vouched for it: they are not the anchor.
    assert chain.verify(public, checkpoint_files=()).ok


def test_a_log_of_no_more_than_checkpoint_every_events_needs_no_anchor_yet(
    chain: AuditChain, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, EVERY - 1)
    result = chain.verify(public)
    assert result.ok
    assert result.unanchored == EVERY - 1


def test_a_checkpoint_file_cut_short_fails_like_a_deleted_one(
    chain: AuditChain, checkpoint_file: Path, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 35)
    checkpoint_file.write_bytes(b"\n".join(lines(checkpoint_file)[:1]) + b"\n")  # only seq 10
    result = chain.verify(public)
    assert not result.ok
    assert result.bad_seq == 11
    assert "25 events are not anchored" in (result.problem or "")


def rewrite_from(engine: Engine, chain: AuditChain, seq: int) -> None:
    """An attacker edits event ``seq`` (and its index row) and recomputes every hash."""
    tamper(
        engine,
        f"UPDATE audit_log SET event = replace(event, 'CarePlan/cp', 'CarePlan/xx') WHERE seq = {seq}",  # noqa: E501
        f"UPDATE audit_index SET value = replace(value, 'CarePlan/cp', 'CarePlan/xx') "
        f"WHERE seq = {seq}",
    )
    prev = GENESIS
    rows = list(chain.rows())
    with as_attacker(engine) as conn:
        for s, recorded, body, _, _ in rows:
            digest = chain_hash(prev, s, recorded, body.encode())
            conn.execute(
                text("UPDATE audit_log SET prev_hash = :p, hash = :h WHERE seq = :s"),
                {"p": prev.hex(), "h": digest.hex(), "s": s},
            )
            prev = digest


def test_rewriting_events_and_deleting_the_database_checkpoints_is_caught_by_the_file(
    chain: AuditChain, engine: Engine, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 25)
    rewrite_from(engine, chain, 4)
    tamper(engine, "DELETE FROM audit_checkpoints")
    alone = chain.verify(public, checkpoint_files=())  # the database alone sees no rewrite ...
    assert "25 events are not anchored by a checkpoint in the database" in (alone.problem or "")
    result = chain.verify(public)  # ... the file does
    assert not result.ok
    assert result.bad_seq == 10
    assert "rewritten" in (result.problem or "")


def test_rewriting_events_and_re_signing_the_database_checkpoints_is_caught_by_the_file(
    chain: AuditChain, engine: Engine, keys: Path, public: ed25519.Ed25519PublicKey
) -> None:
    """Even with the signing key stolen: the file's lines were written before the rewrite."""
    fill(chain, 25)
    rewrite_from(engine, chain, 4)
    stolen = CheckpointSigner.from_keys_dir(keys)
    forged = [stolen.sign(s, h, START.isoformat()) for s, _, _, _, h in chain.rows() if s % 10 == 0]
    tamper(engine, "DELETE FROM audit_checkpoints")
    with as_attacker(engine) as conn:
        for c in forged:
            conn.execute(
                text("INSERT INTO audit_checkpoints VALUES (:s, :h, :t, :k, :g)"),
                {"s": c.seq, "h": c.hash, "t": c.signed_at, "k": c.key_id, "g": c.signature},
            )
    assert chain.verify(public, checkpoint_files=()).ok
    result = chain.verify(public)
    assert not result.ok
    assert result.bad_seq == 10
    assert "two signed checkpoints disagree" in (result.problem or "")


# -- the order: the database commit, then the file ---------------------------------------------


class FailingCommit:
    """The chain's driver connection, whose next commit fails as a lost database would."""

    def __init__(self, conn: Any, error: type[Exception]) -> None:
        self._conn, self._error = conn, error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def commit(self) -> None:
        raise self._error("connection lost during commit")


def test_a_failed_commit_writes_no_checkpoint_line(
    chain: AuditChain,
    engine: Engine,
    checkpoint_file: Path,
    public: ed25519.Ed25519PublicKey,
) -> None:
    fill(chain, 7)
    dbapi = engine.dialect.dbapi
    assert dbapi is not None
    chain._writer = FailingCommit(chain._writer, dbapi.Error)
    with pytest.raises(ServiceUnavailable):
        chain.append([event(100 + i) for i in range(5)])  # would be seqs 8..12, checkpoint 10
    assert not checkpoint_file.exists() or seqs_in(checkpoint_file) == []
    # The seqs are used again, by other events: the file agrees with what was committed.
    fill(chain, 20, offset=200)
    assert seqs_in(checkpoint_file) == [10, 20]
    result = chain.verify(public)
    assert result.ok, result
    assert result.events == 27


def test_a_checkpoint_file_that_cannot_be_written_after_the_commit_is_retried(
    chain: AuditChain,
    checkpoint_file: Path,
    public: ed25519.Ed25519PublicKey,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def full_disk(self: CheckpointFile, checkpoints: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CheckpointFile, "append", full_disk)
    with caplog.at_level(logging.ERROR, logger="gateway.audit"):
        assert chain.append([event(i) for i in range(10)]) == list(range(1, 11))  # committed
    assert [c.seq for c in chain.checkpoints()] == [10]
    assert seqs_in(checkpoint_file) == []  # no line (the lock may have made an empty file)
    assert "audit checkpoint file not written (OSError)" in caplog.text
    assert "CarePlan" not in caplog.text
    # Not an alarm: ten events are not yet anchored, which checkpoint_every allows.
    missing = chain.verify(public)
    assert missing.ok, missing
    assert missing.unanchored == 10
    monkeypatch.undo()
    chain.append([event(11)])  # the next commit writes what the file missed
    assert seqs_in(checkpoint_file) == [10]
    anchored = chain.verify(public)
    assert anchored.ok
    assert anchored.unanchored == 1


def test_a_line_lost_to_a_crash_after_the_commit_is_counted_and_the_next_checkpoint_anchors(
    engine: Engine,
    keys: Path,
    chain: AuditChain,
    checkpoint_file: Path,
    public: ed25519.Ed25519PublicKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(CheckpointFile, "append", lambda self, checkpoints: None)  # the crash
    fill(chain, 14)
    monkeypatch.undo()
    chain.close()
    restarted = AuditChain(
        engine,
        CheckpointSigner.from_keys_dir(keys),
        FrozenClock(START),
        checkpoint_every=EVERY,
        checkpoint_file=checkpoint_file,
    )
    result = restarted.verify(public)
    assert not result.ok  # 14 events past an anchor of none: never "disagree", only counted
    assert "14 events are not anchored" in (result.problem or "")
    signed = restarted.checkpoint()  # `gateway audit checkpoint`
    assert signed is not None
    assert signed.seq == 14
    assert restarted.verify(public).ok
    fill(restarted, 10, offset=14)
    assert seqs_in(checkpoint_file) == [14, 20]
    assert restarted.verify(public).unanchored == 4
    restarted.close()
