"""The ``gateway`` command line, run in-process with settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from gateway.cli import app
from gateway.keys import ENCRYPTION_FILE
from tests.support.server import ROOT

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("GATEWAY_KEYS_DIR", str(tmp_path / "keys"))
    return tmp_path


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "demo", "keys", "db"):
        assert command in result.output


def test_keys_init_refuses_to_run_twice(env: Path) -> None:
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    before = (env / "keys" / ENCRYPTION_FILE).read_bytes()
    second = runner.invoke(app, ["keys", "init"])
    assert second.exit_code == 1
    assert "refusing to overwrite" in second.output
    assert (env / "keys" / ENCRYPTION_FILE).read_bytes() == before


def test_serve_refuses_to_start_without_keys(env: Path) -> None:
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 1
    assert "keys init" in result.output


def test_serve_refuses_to_start_with_a_broken_consent_policy(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    policies = env / "policies"
    policies.mkdir()
    for name in ("network.yaml", "labels.yaml", "schema.json"):
        (policies / name).write_bytes((ROOT / "consent_policies" / name).read_bytes())
    network = policies / "network.yaml"
    network.write_text(
        network.read_text().replace("max_consent_days: 365", "max_consent_days: forever")
    )
    monkeypatch.setenv("GATEWAY_POLICIES_DIR", str(policies))
    monkeypatch.setenv("GATEWAY_DEMO", "true")
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 1
    assert "network.yaml" in result.output
    assert "max_consent_days" in result.output


def test_bad_settings_are_a_clear_start_up_error(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "mysql://somewhere/db")
    result = runner.invoke(app, ["keys", "init"])
    assert result.exit_code == 1
    assert "bad settings" in result.output


def test_rotate_then_reencrypt_then_status(env: Path) -> None:
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    rotated = runner.invoke(app, ["keys", "rotate"])
    assert rotated.exit_code == 0
    assert "2 keys" in rotated.output
    assert runner.invoke(app, ["keys", "reencrypt"]).exit_code == 0
    status = runner.invoke(app, ["keys", "status"])
    assert status.exit_code == 0
    assert status.output.count("yes") == 1


def test_demo_runs_end_to_end_and_can_run_again(env: Path) -> None:
    first = runner.invoke(app, ["demo"])
    assert first.exit_code == 0, first.output
    assert "every step answered as expected" in first.output
    again = runner.invoke(app, ["demo"])
    assert again.exit_code == 0, again.output


def test_db_reindex_rebuilds_every_resources_index(env: Path) -> None:
    assert runner.invoke(app, ["demo"]).exit_code == 0
    result = runner.invoke(app, ["db", "reindex", "--batch", "3"])
    assert result.exit_code == 0, result.output
    assert "reindexed" in result.output
    assert runner.invoke(app, ["demo"]).exit_code == 0  # and the data still answers the same


def test_audit_verify_passes_after_the_demo_and_names_the_seq_after_tampering(env: Path) -> None:
    assert runner.invoke(app, ["demo"]).exit_code == 0
    verified = runner.invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output
    assert verified.output.startswith("verified ")
    engine = create_engine(f"sqlite:///{env}/cli.db")
    with engine.begin() as conn:
        conn.execute(
            text(
                """UPDATE audit_log SET event = replace(event, '"rest"', '"REST"') WHERE seq = 3"""
            )
        )
    engine.dispose()
    tampered = runner.invoke(app, ["audit", "verify"])
    assert tampered.exit_code == 1
    assert tampered.output.startswith("seq 3: event edited")


def test_an_audit_export_verifies_offline_with_the_public_key_alone(env: Path) -> None:
    assert runner.invoke(app, ["demo"]).exit_code == 0
    assert runner.invoke(app, ["audit", "checkpoint"]).exit_code == 0
    out = env / "audit.ndjson"
    exported = runner.invoke(app, ["audit", "export", "--format", "ndjson", "--output", str(out)])
    assert exported.exit_code == 0, exported.output
    lines = out.read_bytes().splitlines()
    assert any(b'"checkpoint"' in line for line in lines)
    offline = runner.invoke(
        app,
        ["audit", "verify", "--export", str(out),
         "--public-key", str(env / "keys" / "audit-signing-key.pub.pem")],
    )  # fmt: skip
    assert offline.exit_code == 0, offline.output
    cut = env / "cut.ndjson"
    cut.write_bytes(b"\n".join(lines[:2] + [line for line in lines if b'"checkpoint"' in line]))
    truncated = runner.invoke(app, ["audit", "verify", "--export", str(cut)])
    assert truncated.exit_code == 1
    assert "truncated" in truncated.output
    assert runner.invoke(app, ["audit", "export", "--format", "csv"]).exit_code == 1


def test_key_rotation_and_audit_exports_are_themselves_audited(env: Path) -> None:
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    assert runner.invoke(app, ["keys", "rotate"]).exit_code == 0
    assert (
        runner.invoke(app, ["audit", "export", "--output", str(env / "out.ndjson")]).exit_code == 0
    )
    engine = create_engine(f"sqlite:///{env}/cli.db")
    with engine.connect() as conn:
        events = [row[0] for row in conn.execute(text("SELECT event FROM audit_log ORDER BY seq"))]
    engine.dispose()
    assert len(events) == 2
    assert '"key-rotation"' in events[0]
    assert '"audit-export"' in events[1]
    assert "operator: gateway key rotation" in events[0]
