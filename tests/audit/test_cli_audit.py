"""The ``gateway keys`` and ``gateway audit`` commands an operator runs: one line each, exit 1
on a problem, and every rotation, export and rebuild audited."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from gateway.audit.chain import AuditChain, CheckpointSigner
from gateway.cli import app
from gateway.clock import FrozenClock
from gateway.keys import AUDIT_PUBLIC_FILE, ENCRYPTION_FILE, TOKEN_PUBLIC_FILE, TOKEN_SIGNING_FILE
from gateway.settings import Settings
from gateway.store.database import make_engine, upgrade
from tests.audit.helpers import fill
from tests.conftest import START

runner = CliRunner()
EVERY = 5


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path}/db/gateway.db")
    monkeypatch.setenv("GATEWAY_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("GATEWAY_AUDIT_CHECKPOINT_EVERY", str(EVERY))
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    return tmp_path


@pytest.fixture
def chain(env: Path) -> Iterator[AuditChain]:
    """The log the commands read, written as a serving gateway would (same settings)."""
    settings = Settings()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    chain = AuditChain(
        engine,
        CheckpointSigner.from_keys_dir(settings.keys_dir),
        FrozenClock(START),
        checkpoint_every=settings.audit_checkpoint_every,
        checkpoint_file=settings.checkpoint_file,
    )
    yield chain
    chain.close()
    engine.dispose()


def events(env: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{env}/db/gateway.db")
    with engine.connect() as conn:
        found = [row[0] for row in conn.execute(text("SELECT event FROM audit_log ORDER BY seq"))]
    engine.dispose()
    return found


def test_keys_init_completes_a_directory_and_says_what_it_made_and_kept(env: Path) -> None:
    keys = env / "keys"
    ring = (keys / ENCRYPTION_FILE).read_bytes()
    (keys / TOKEN_SIGNING_FILE).unlink()
    result = runner.invoke(app, ["keys", "init"])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(
        f"created {TOKEN_SIGNING_FILE}; added the new key to {TOKEN_PUBLIC_FILE}; "
        f"kept {ENCRYPTION_FILE}, "
    )
    assert (keys / ENCRYPTION_FILE).read_bytes() == ring
    assert runner.invoke(app, ["keys", "init"]).exit_code == 1  # nothing left to make


def test_keys_rotate_rotates_the_encryption_key_by_default(env: Path) -> None:
    result = runner.invoke(app, ["keys", "rotate"])
    assert result.exit_code == 0, result.output
    assert "active encryption key is now" in result.output
    assert "(2 keys)" in result.output
    [rotation] = events(env)
    assert "operator: gateway key rotation (encryption key)" in rotation


def test_keys_rotate_token_and_audit_are_each_audited(env: Path) -> None:
    result = runner.invoke(app, ["keys", "rotate", "--token", "--audit"])
    assert result.exit_code == 0, result.output
    assert "token signing key is now" in result.output
    assert "audit signing key is now" in result.output
    assert "active encryption key" not in result.output
    token, audit = events(env)
    assert "key rotation (token signing key)" in token
    assert '"key-rotation"' in token
    assert "key rotation (audit signing key)" in audit


def test_audit_verify_reports_the_unanchored_events(env: Path, chain: AuditChain) -> None:
    fill(chain, 7)
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "verified 7 events and 1 signed checkpoints; "
        "2 events not yet anchored in the checkpoint file"
    )
    assert (env / "db" / "audit-checkpoints").exists()  # beside the database


def test_audit_verify_fails_in_one_line_when_the_checkpoint_file_is_gone(
    env: Path, chain: AuditChain
) -> None:
    fill(chain, 12)
    (env / "db" / "audit-checkpoints").unlink()
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "seq 1: 12 events are not anchored by a checkpoint in the checkpoint file (absent) "
        f"(at most {EVERY} may be): its checkpoints are missing"
    ]
    # `audit checkpoint` anchors the head again (after the operator has looked into it).
    assert runner.invoke(app, ["audit", "checkpoint"]).output.strip() == "signed seq 12"
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0


def test_audit_verify_names_the_seq_of_a_tampered_index_row(env: Path, chain: AuditChain) -> None:
    fill(chain, 7)
    engine = create_engine(f"sqlite:///{env}/db/gateway.db")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_index WHERE seq = 3 AND param = 'patient'"))
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 1
    assert result.output.startswith("seq 3: audit_index rows do not match the event")
    rebuilt = runner.invoke(app, ["audit", "reindex"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert rebuilt.output.strip() == "rebuilt audit_index from 7 events"
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
    assert '"audit-reindex"' in events(env)[-1]
    engine.dispose()


def test_audit_checkpoint_says_when_the_file_cannot_be_written(
    env: Path, chain: AuditChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(chain, 3)
    (env / "blocked").write_text("a file, not a directory")
    monkeypatch.setenv("GATEWAY_AUDIT_CHECKPOINT_FILE", str(env / "blocked" / "checkpoints"))
    result = runner.invoke(app, ["audit", "checkpoint"])
    assert result.exit_code == 1
    assert "the checkpoint is in the database but not in the checkpoint file" in result.output
    assert "Traceback" not in result.output


def test_audit_export_writes_utc_stamps_and_never_overwrites_without_force(
    env: Path, chain: AuditChain
) -> None:
    fill(chain, 6)
    out = env / "audit.ndjson"
    assert runner.invoke(app, ["audit", "export", "--output", str(out)]).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    docs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert all(d["recorded"].endswith("Z") for d in docs if "seq" in d)
    assert all(d["checkpoint"]["signed_at"].endswith("Z") for d in docs if "checkpoint" in d)
    first = out.read_bytes()
    again = runner.invoke(app, ["audit", "export", "--output", str(out)])
    assert again.exit_code == 1
    assert "exists; pass --force to overwrite it" in again.output
    assert out.read_bytes() == first
    forced = runner.invoke(app, ["audit", "export", "--output", str(out), "--force"])
    assert forced.exit_code == 0
    assert out.read_bytes() != first  # the first export is in this one, audited
    offline = runner.invoke(app, ["audit", "verify", "--export", str(out)])
    assert offline.exit_code == 0, offline.output


def test_an_export_spanning_an_audit_key_rotation_verifies_offline_with_the_public_list(
    env: Path, chain: AuditChain
) -> None:
    fill(chain, 6)  # checkpoint 5 under the first key
    assert runner.invoke(app, ["keys", "rotate", "--audit"]).exit_code == 0
    assert runner.invoke(app, ["audit", "checkpoint"]).exit_code == 0  # seq 7 under the new key
    out = env / "audit.ndjson"
    assert runner.invoke(app, ["audit", "export", "--output", str(out)]).exit_code == 0
    public = env / "keys" / AUDIT_PUBLIC_FILE
    listed = runner.invoke(
        app, ["audit", "verify", "--export", str(out), "--public-key", str(public)]
    )
    assert listed.exit_code == 0, listed.output
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
    newest = env / "newest.pem"
    newest.write_bytes(
        public.read_bytes().split(b"-----END PUBLIC KEY-----")[0] + b"-----END PUBLIC KEY-----\n"
    )
    alone = runner.invoke(
        app, ["audit", "verify", "--export", str(out), "--public-key", str(newest)]
    )
    assert alone.exit_code == 1
    assert "seq 5: checkpoint signed by an unknown key" in alone.output
