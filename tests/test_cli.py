"""The ``gateway`` command line, run in-process with settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
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
